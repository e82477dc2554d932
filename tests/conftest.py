import os

import pytest

_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder holding the four original MNIST .gz files, or skip.

    Looks at $CHAINRULE_MNIST_DIR, then <repo root>/../shared/data/mnist.
    """
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [os.environ.get("CHAINRULE_MNIST_DIR"),
                  os.path.join(repo_root, "..", "shared", "data", "mnist")]
    for folder in filter(None, candidates):
        if all(os.path.isfile(os.path.join(folder, f)) for f in _MNIST_FILES):
            return os.path.normpath(folder)
    reason = f"MNIST files not found in $CHAINRULE_MNIST_DIR or {candidates[1]}"
    print(reason)
    pytest.skip(reason)
