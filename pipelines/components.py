"""DVC stage `components` (first, always run): content fingerprints of the model folders and
weight files the params name (components.*, evaluate.inception) -> models/fingerprints/<part>.json.

DVC knows those folders by path only; each later stage depends on the fingerprints of the
parts it reads, so new weights in the same folder re-run exactly the stages that read them.
Files are hashed once per size and mtime (vlv.fingerprints), so an unchanged run takes seconds.
"""

from vlv import config, fingerprints
from vlv.entry import stage


@stage("components", main_only=True)
def main(params: config.Params) -> None:
    """Fingerprint the component folders by content."""
    records = fingerprints.write(params)
    shown = ", ".join(f"{k} {r['sha256'][:12]}" if "sha256" in r else f"{k} {'null' if r['path'] is None else 'made by pretrain'}"
                      for k, r in records.items())
    print(f"components: {shown} -> {fingerprints.OUT}")


if __name__ == "__main__":
    main()
