"""``python -m imgsvc``: the ``imgsvc`` command, for where its script is not on PATH."""

from imgsvc.cli import main

if __name__ == "__main__":
    main(prog_name="imgsvc")
