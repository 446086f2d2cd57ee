"""``python -m steerlab.cli``: the ``steerlab`` command line."""

from steerlab.cli import main

if __name__ == "__main__":
    main()
