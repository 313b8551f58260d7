"""The headline metrics file and the per-step precision plot, from hand-made stage records."""

from __future__ import annotations

from diysc.headline import headline, precision_by_step

ALPHAS = (0.1, 0.05, 0.01)
AVERAGES = ("per_image", "per_keypoint")


def block(base: float) -> dict:
    return {
        "per_image": {"pck_alpha10": base, "pck_alpha05": base / 2, "pck_alpha01": base / 10},
        "per_keypoint": {
            "pck_alpha10": base + 1,
            "pck_alpha05": base / 2 + 1,
            "pck_alpha01": base / 10 + 1,
        },
    }


def pseudo() -> dict:
    step = lambda p, n: {"precision_alpha10": p, "points": n}  # noqa: E731
    trn = {"pairs": 40, "points": 300, "raw_nn": step(0.5, 900), "cycle": step(0.6, 500)}
    trn |= {"sphere_filter": step(0.8, 300), "emitted": step(0.8, 300)}
    return {"trn": trn, "val": {"raw_nn": step(0.4, 90), "emitted": step(0.7, 30)}}


def test_headline_picks_pck_precision_and_the_recorded_settings():
    labels = {"mask": True, "cycle": "relaxed", "chaining": False, "sphere_filter": True}
    train = {"labels": labels | {"r_max": 2}, "adapter": {"channels": 384}, "steps": 30, "seed": 2}
    evaluated = {"adapter": block(60.0), "zero_shot": block(50.0)}
    record = headline(evaluated, pseudo(), train, ALPHAS)
    assert record["adapter"] == {
        "per_image_alpha10": 60.0,
        "per_image_alpha05": 30.0,
        "per_image_alpha01": 6.0,
        "per_keypoint_alpha10": 61.0,
        "per_keypoint_alpha05": 31.0,
        "per_keypoint_alpha01": 7.0,
    }
    assert record["zero_shot"]["per_image_alpha10"] == 50.0
    assert record["labels"] == {"pairs": 40, "points": 300, "precision_alpha10": 0.8}
    assert record["settings"] == labels | {"channels": 384, "steps": 30, "seed": 2}
    # labels recorded before a toggle existed ran with it off
    older = headline(evaluated, pseudo(), {"labels": {"cycle": "strict"}}, ALPHAS)["settings"]
    assert older["cycle"] == "strict" and older["chaining"] is False and older["mask"] is False


def test_precision_rows_follow_the_filter_order_and_skip_steps_that_did_not_run():
    rows = precision_by_step(pseudo())
    assert [(r["step"], r["order"]) for r in rows] == [
        ("raw_nn", 0),
        ("cycle", 1),
        ("sphere_filter", 3),
        ("emitted", 4),
    ]
    assert rows[0] == {
        "step": "raw_nn",
        "order": 0,
        "trn_precision_alpha10": 0.5,
        "trn_points": 900,
        "val_precision_alpha10": 0.4,
        "val_points": 90,
    }
    assert "val_precision_alpha10" not in rows[1]  # val has no cycle record here


def test_the_headline_follows_the_evaluated_alphas():
    """`eval.alphas=[0.1,0.15]`: the headline holds PCK@0.15, not a PCK@0.05 never computed."""
    evaluated = {"adapter": {avg: {"pck_alpha10": 40.0, "pck_alpha15": 55.0} for avg in AVERAGES}}
    record = headline(evaluated, pseudo(), {}, (0.1, 0.15))
    assert record["adapter"] == {
        "per_image_alpha10": 40.0,
        "per_image_alpha15": 55.0,
        "per_keypoint_alpha10": 40.0,
        "per_keypoint_alpha15": 55.0,
    }
