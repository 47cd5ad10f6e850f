"""A class the Python SDK tests construct remotely."""

import threading


class Trainer:
    def __init__(self, lr, model="bert-base"):
        self.lr = lr
        self.model = model
        self.epochs = 0
        self.lock = threading.Lock()
        print(f"loading {model} at lr={lr}")

    def train_epoch(self, epoch):
        with self.lock:
            self.epochs += 1
        print(f"epoch {epoch} done")
        return {"epoch": epoch, "epochs_run": self.epochs}

    def evaluate(self):
        return {"epochs_run": self.epochs, "lr": self.lr, "model": self.model}

    def explode(self):
        raise ZeroDivisionError("bad batch")


class Fragile:
    def __init__(self):
        raise MemoryError("model does not fit")


class Service:
    """A warm object with a method that does nothing (for `make bench`)."""

    def noop(self):
        return None
