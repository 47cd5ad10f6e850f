"""Small, real ML on scikit-learn's bundled iris data: ordinary functions, no orchestration code.

Each step takes and returns small JSON (lists and dicts), which is how the
steps hand data to one another through the orchestrator. Bigger data would
go to shared storage, passing only its URI.
"""

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
    """Predicts the test set with the trained parameters."""
    import numpy as np

    scores = np.asarray(splits["test"]["X"]) @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    predictions = [model["classes"][i] for i in scores.argmax(axis=1)]
    print(f"predicted {len(predictions)} samples")
    return {"predicted": predictions, "actual": splits["test"]["y"]}


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
