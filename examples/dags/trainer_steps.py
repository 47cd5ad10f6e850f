"""A trainer that lives between tasks: constructed once, trained an epoch per task, then evaluated.

An ordinary class, no orchestration code. Its model stays in the remote
worker's memory between calls; only small JSON crosses back to Airflow.
"""

CONSTRUCTED = 0


class Trainer:
    def __init__(self, lr=0.01, seed=7):
        global CONSTRUCTED
        CONSTRUCTED += 1
        from sklearn.datasets import load_iris
        from sklearn.linear_model import SGDClassifier
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        iris = load_iris()
        X = StandardScaler().fit_transform(iris.data)
        self.X_train, self.X_test, self.y_train, self.y_test = train_test_split(
            X, iris.target, test_size=0.3, random_state=seed, stratify=iris.target
        )
        self.classes = sorted(set(iris.target.tolist()))
        self.model = SGDClassifier(learning_rate="constant", eta0=lr, random_state=seed)
        self.epochs = 0
        print(f"trainer ready: {len(self.X_train)} training samples, lr={lr}")

    def train_epoch(self, epoch):
        self.model.partial_fit(self.X_train, self.y_train, classes=self.classes)
        self.epochs += 1
        accuracy = float(self.model.score(self.X_train, self.y_train))
        print(f"epoch {epoch}: train accuracy {accuracy:.3f}")
        return {"epoch": epoch, "epochs_run": self.epochs, "train_accuracy": accuracy}

    def evaluate(self):
        accuracy = float(self.model.score(self.X_test, self.y_test))
        print(f"test accuracy {accuracy:.3f} after {self.epochs} epochs")
        return {"test_accuracy": accuracy, "epochs_run": self.epochs, "constructed": CONSTRUCTED}
