"""Check that `dvc plots show` draws every chart with no network, and screenshot it and MLflow.

Run from the repository's root after a `dvc repro` (which leaves the plots and `mlflow.db`):

    python tools/screenshots.py            # needs Debian's `chromium`; writes docs/screenshots/

1. `dvc plots show` renders the workspace's plots into a temporary folder; headless Chromium opens
   the page with the network shut (every request that leaves the machine goes to a dead proxy
   and no host name resolves), and every chart must have drawn: an SVG with its title, both axis
   titles and a line with points. The same check on DVC's own page (libraries from a CDN) must
   find no chart drawn, which shows the network really was shut.
2. `mlflow server` on 127.0.0.1 over the run's sqlite store (stopped afterwards), and a screenshot
   of the experiment's runs table (the parent runs, sorted by their headline PCK) and of the best
   parent's page (its name and headline metrics).

Exits 1 naming what failed.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ("chromium", "chromium-browser", "google-chrome")
# Headless, no first-run work, no background fetches of its own; every request to another host
# goes to a proxy that does not exist and no name resolves (loopback stays reachable for MLflow).
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)
# DVC's default page: its scripts (vega from a CDN) and the charts.
CDN_TEMPLATE = "<!DOCTYPE html><html><head>{scripts}</head><body>{plot_divs}</body></html>"


def browser() -> str:
    for name in BROWSER:
        found = shutil.which(name)
        if found:
            return found
    sys.exit("no Chromium found: apt-get install -y chromium")


def chromium(url: str, *args: str, budget_ms: int = 15000) -> str:
    """Open `url` in a fresh headless profile with the network shut; stdout (e.g. --dump-dom)."""
    for arg in args:  # a screenshot left by an earlier run must not pass for this one's
        if arg.startswith("--screenshot="):
            Path(arg.split("=", 1)[1]).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser(), *OFFLINE_FLAGS, f"--user-data-dir={profile}"]
            + [f"--virtual-time-budget={budget_ms}", *args, url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    failed = done.returncode != 0 or "Page load failed" in done.stderr
    shots = [a.split("=", 1)[1] for a in args if a.startswith("--screenshot=")]
    if failed or not all(Path(s).is_file() for s in shots):
        sys.exit(f"chromium failed on {url}: {done.stderr[-2000:]}")
    return done.stdout


def plots_page(out: Path, template: str | None = None) -> Path:
    """`dvc plots show` of the workspace into `out`; DVC's own page when `template` is given."""
    extra = ["--html-template", template] if template else []
    subprocess.run(
        ["dvc", "plots", "show", "-o", str(out), *extra],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out / "index.html"


def charts(page: Path) -> list[str]:
    """The ids of the Vega charts on a page DVC wrote (`vegaEmbed('#<id>', spec)`)."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page.read_text())


def drawn(dom: str, chart: str) -> list[str]:
    """What chart `chart` lacks in the rendered DOM: [] when it drew completely."""
    start = dom.find(f'<div id="{chart}"')
    if start < 0:
        return ["its element"]
    end = dom.find('class="vega-embed', dom.find(">", start))  # the next chart's element
    block = dom[start : end if end > 0 else len(dom)]
    wanted = {
        "an SVG": '<svg[^>]*class="marks"',
        "a title": r"aria-label=\"Title text '[^']+'",
        "an x-axis title": r"aria-label=\"X-axis titled '[^']+'",
        "a y-axis title": r"aria-label=\"Y-axis titled '[^']+'",
        "a line": r'class="mark-line[^"]*"[^>]*>\s*<path[^>]*d="M',
        "points": r'class="mark-symbol[^"]*"[^>]*>\s*<path[^>]*d="M',
    }
    return [what for what, pattern in wanted.items() if not re.search(pattern, block)]


def check_plots(shots: Path, work: Path) -> list[str]:
    page = plots_page(work / "plots")
    ids = charts(page)
    dom = chromium(page.as_uri(), "--dump-dom")
    problems = [f"{c} lacks {', '.join(miss)}" for c in ids if (miss := drawn(dom, c))]
    pictures = re.findall(r'<img src="(static/[^"]+)"', page.read_text())
    problems += [f"{p}: missing" for p in pictures if not (page.parent / p).is_file()]
    titles = re.findall(r"aria-label=\"Title text '([^']+)'", dom)
    print(f"plots page: {len(ids)} charts, {len(ids) - len(problems)} drawn offline")
    for title in titles:
        print(f"  {title}")
    print(f"  and {len(pictures)} pictures")
    if not ids:
        problems.append("the page has no chart")
    # The control: the same charts from DVC's own page, whose libraries come from a CDN.
    template = work / "cdn.html"
    template.write_text(CDN_TEMPLATE)
    cdn_dom = chromium(plots_page(work / "cdn", str(template)).as_uri(), "--dump-dom")
    cdn_drawn = [c for c in ids if not drawn(cdn_dom, c)]
    print(f"DVC's own page (vega from a CDN), same browser: {len(cdn_drawn)} charts drawn")
    if cdn_drawn:
        problems.append(f"the network was not shut: DVC's CDN page drew {cdn_drawn}")
    height = 420 * ((len(ids) + 1) // 2) + 330 * len(pictures) + 200
    chromium(page.as_uri(), f"--screenshot={shots / 'plots.png'}", f"--window-size=1100,{height}")
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on loopback over the sqlite store, until the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{store}", "--workers", "1"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"mlflow server did not answer at {url}: {log.read_text()[-2000:]}")
            time.sleep(2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def shoot_mlflow(shots: Path, work: Path, experiment: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    store = ROOT / "mlflow.db"
    if not store.is_file():
        return [f"{store.name}: none (run `dvc repro` first)"]
    client = MlflowClient(f"sqlite:///{store}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [f"{store.name}: no experiment {experiment!r}"]
    parents = [
        r
        for r in client.search_runs([found.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    scored = [r for r in parents if "adapter.per_image_alpha10" in r.data.metrics]
    print(f"MLflow: {len(parents)} parent runs, {len(scored)} with their headline PCK")
    for run in scored:
        print(
            f"  {run.info.run_name}: adapter PCK@0.1 {run.data.metrics['adapter.per_image_alpha10']}"
        )
    with mlflow_server(store, work / "mlflow.log") as url:
        # the runs table, parent runs only, best headline PCK first
        query = "orderByKey=metrics.%60adapter.per_image_alpha10%60&orderByAsc=false"
        query += "&searchFilter=tags.%60diysc.parent_key%60%20LIKE%20%27%25%27"
        page = f"{url}/#/experiments/{found.experiment_id}/runs?{query}"
        size = "--window-size=1800,900"
        chromium(page, f"--screenshot={shots / 'mlflow.png'}", size, budget_ms=30000)
        if scored:  # the best parent's own page: its name and headline metrics
            best = max(scored, key=lambda r: r.data.metrics["adapter.per_image_alpha10"])
            page = f"{url}/#/experiments/{found.experiment_id}/runs/{best.info.run_id}"
            chromium(page, f"--screenshot={shots / 'mlflow_parent.png'}", size, budget_ms=30000)
    return [] if scored else ["no parent run holds its headline metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--experiment", default="diysc", help="tracking.experiment of params")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        problems = check_plots(args.out, Path(work))
        problems += shoot_mlflow(args.out, Path(work), args.experiment)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"screenshots: {', '.join(sorted(p.name for p in args.out.glob('*.png')))} in {args.out}")


if __name__ == "__main__":
    main()
