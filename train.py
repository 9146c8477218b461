"""The entry point users type: ``python train.py [recipe=NAME] [key=value ...]``.

Runs prepare (when the token cache is missing) -> train -> evaluate -> export for the recipe;
``python train.py`` alone runs the offline demo recipe.
"""

import sys

from musicgen_train.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
