"""Pipeline parameters, one concern per module (import the one you use: a stage's DVC deps are
its import closure).

- `schema`: the typed groups of params.yaml and their range checks (`Params`, `ParamsError`).
- `overrides`: raw dicts to checked `Params`, `key=value` overrides, ablation variants.
- `compose`: params.yaml as Hydra's composition of `conf/`, and the check that it is not hand-edited.
- `load`: reading a params file (`load_params`).
- `stage`: a stage's view of the params: only the keys its dvc.yaml entry declares.
"""
