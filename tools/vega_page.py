"""Write the page template of `dvc plots show` with Vega inlined, so the charts draw offline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN (dvc-render's `{scripts}`), so on a
machine without network its line charts stay blank. `.dvc/config` names this template instead
(`plots.html_template`); it carries the three libraries inline, taken from their npm packages at
the pinned versions below (`npm pack`, which checks each package's registry integrity), and their
licences beside it. The last majors whose schema DVC's specs name (Vega-Lite v5).

    python tools/vega_page.py     # needs `npm`; rewrites vendor/vega/
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from diysc.viz import NOT_RESULT_PRESETS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "vendor" / "vega"
# package, version, its browser bundle inside the package
PACKAGES = (
    ("vega", "5.33.1", "build/vega.min.js"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js"),
)
# The page note: which presets' figures are not results (the same note as the evaluate PNGs').
NOTE = (
    "Each chart's title names the preset that computed it. Figures of the "
    + " and ".join(f"<b>{preset}</b>" for preset in NOT_RESULT_PRESETS)
    + " presets are pipeline checks (synthetic data or random weights), not results."
)
# DVC's page calls `vegaEmbed(el, spec)`: draw as SVG, sharp at any zoom and with its marks in the
# page's DOM (tools/screenshots.py counts them).
SVG = (
    "window.vegaEmbed = ((embed) => (el, spec, opts) =>"
    ' embed(el, spec, {renderer: "svg", ...opts}))(window.vegaEmbed);'
)
STYLE = """
    body { font-family: sans-serif; margin: 16px; }
    .note { background: #fff7d6; border: 1px solid #e0c050; padding: 6px 10px; max-width: 60em; }
    table { border-spacing: 15px; }
"""


def fetch(name: str, version: str, member: str, work: Path) -> tuple[str, str | None]:
    """The bundle's text (its source-map comment removed: nothing to fetch) and the package's
    LICENSE text, if it ships one."""
    subprocess.run(
        ["npm", "pack", "--silent", f"{name}@{version}"], cwd=work, check=True, capture_output=True
    )
    with tarfile.open(work / f"{name}-{version}.tgz") as tar:
        bundle = tar.extractfile(f"package/{member}").read().decode()
        names = tar.getnames()
        licence = (
            tar.extractfile("package/LICENSE").read().decode()
            if "package/LICENSE" in names
            else None
        )
    if "</script" in bundle.lower():
        sys.exit(f"{name}: the bundle contains '</script', which would end the inline script")
    return re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", bundle), licence


def page(scripts: list[tuple[str, str, str]]) -> str:
    """The template: DVC fills `{refresh_tag}` and `{plot_divs}`; its `{scripts}` (the CDN) is
    left out."""
    versions = ", ".join(f"{name} {version}" for name, version, _ in scripts)
    inline = "\n".join(
        f"<script>/* {name} {version}, BSD-3-Clause (vendor/vega/LICENSE.{name}) */\n{code}\n"
        "</script>"
        for name, version, code in scripts
    )
    inline += f"\n<script>{SVG}</script>"
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        f"<title>diysc plots</title>\n<!-- {versions} inlined by tools/vega_page.py -->\n"
        f"{inline}\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<p class="note">{NOTE}</p>\n{{plot_divs}}\n</body>\n</html>\n'
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    scripts = []
    with tempfile.TemporaryDirectory() as work:
        for name, version, member in PACKAGES:
            code, licence = fetch(name, version, member, Path(work))
            scripts.append((name, version, code))
            if licence is not None:
                (OUT / f"LICENSE.{name}").write_text(licence)
            elif not (OUT / f"LICENSE.{name}").exists():
                sys.exit(f"{name} {version} ships no LICENSE: add vendor/vega/LICENSE.{name}")
    (OUT / "plots.html").write_text(page(scripts))
    print(f"wrote {OUT / 'plots.html'}")


if __name__ == "__main__":
    main()
