"""``python -m perceus.stage1``: the stage-one program (see main.py)."""

from perceus.stage1.main import main

main()
