"""Small, real ML on scikit-learn's bundled iris data: ordinary functions, no orchestration code.

Each step takes and returns small JSON (lists and dicts), which is how the
steps hand data to one another through the orchestrator. Bigger data would
go to shared storage, passing only its URI.
"""

import os

RANDOM_STATE = 7


def preprocess():
    """Loads iris and standardises the four features."""
    from sklearn.datasets import load_iris
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    features = StandardScaler().fit_transform(iris.data)
    print(f"loaded {len(features)} samples, {features.shape[1]} features, classes {list(iris.target_names)}")
    return {"X": features.round(6).tolist(), "y": iris.target.tolist(), "classes": list(iris.target_names)}


def split(data, test_size=0.3):
    """A stratified train/test split."""
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(
        data["X"], data["y"], test_size=test_size, random_state=RANDOM_STATE, stratify=data["y"]
    )
    print(f"train {len(X_train)} / test {len(X_test)}")
    return {"train": {"X": X_train, "y": y_train}, "test": {"X": X_test, "y": y_test}, "classes": data["classes"]}


def train(splits, C=1.0, max_iter=200):
    """Fits a logistic regression; returns its parameters (a few numbers) as the model."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(splits["train"]["X"], splits["train"]["y"])
    print(f"trained: train accuracy {model.score(splits['train']['X'], splits['train']['y']):.3f}")
    return {"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(), "classes": model.classes_.tolist()}


def predict(model, splits):
    """Predicts the test set with the trained parameters, and plots it (iris_logistic.png, kept as an artifact)."""
    import numpy as np

    X = np.asarray(splits["test"]["X"])
    scores = X @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    predictions = [model["classes"][i] for i in scores.argmax(axis=1)]
    print(f"predicted {len(predictions)} samples")
    path = os.path.join(os.environ.get("RH_OUTPUTS", "."), "iris_logistic.png")
    with open(path, "wb") as f:
        f.write(_scatter_png(X[:, 2], X[:, 3], predictions, splits["test"]["y"]))
    print(f"plotted the test set by petal length and width: {os.path.basename(path)}")
    return {"predicted": predictions, "actual": splits["test"]["y"]}


def _scatter_png(x, y, predicted, actual, size=360):
    """A scatter plot as PNG bytes: one dot per sample, coloured by predicted class, ringed in black
    where the prediction is wrong. Drawn with numpy and zlib, so the step needs no plotting library."""
    import struct
    import zlib

    import numpy as np

    colours = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44]], dtype=np.uint8)
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    margin = 24
    image[margin:size - margin + 1:48, margin:size - margin] = 225  # horizontal grid lines
    image[margin:size - margin, margin:size - margin + 1:48] = 225  # vertical grid lines
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    span = lambda v: (v - v.min()) / max(float(np.ptp(v)), 1e-9)  # noqa: E731
    cols = (margin + span(x) * (size - 2 * margin)).astype(int)
    rows = (size - margin - span(y) * (size - 2 * margin)).astype(int)
    dy, dx = np.mgrid[-6:7, -6:7]
    distance = np.hypot(dy, dx)
    for r, c, p, a in zip(rows, cols, predicted, actual):
        if p != a:
            ring = (distance <= 6) & (distance > 4)
            image[np.clip(r + dy[ring], 0, size - 1), np.clip(c + dx[ring], 0, size - 1)] = 0
        dot = distance <= 4
        image[np.clip(r + dy[dot], 0, size - 1), np.clip(c + dx[dot], 0, size - 1)] = colours[int(p) % 3]
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(size))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def accuracy(predictions):
    """The share of test samples predicted right."""
    pairs = list(zip(predictions["predicted"], predictions["actual"]))
    value = sum(p == a for p, a in pairs) / len(pairs)
    print(f"accuracy {value:.3f} on {len(pairs)} test samples")
    return round(value, 4)


def sweep(C_values, folds=5):
    """Cross-validates a logistic regression for each C; returns the best."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    scores = {}
    for C in C_values:
        scores[C] = float(cross_val_score(LogisticRegression(C=C, max_iter=500), X, y, cv=folds).mean())
        print(f"C={C}: mean accuracy {scores[C]:.3f}", flush=True)
    best = max(scores, key=scores.get)
    print(f"best C={best}")
    return {"C": best, "accuracy": round(scores[best], 4)}
