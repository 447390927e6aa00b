"""``python -m imprint`` runs the command-line interface."""

from imprint.engine.cli import main

if __name__ == "__main__":
    main()
