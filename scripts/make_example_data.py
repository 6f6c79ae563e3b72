"""Write the bundled example datasets (both ship inside scikit-learn: no download)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer, make_friedman1

DATA = Path(__file__).resolve().parent.parent / "data"


def main() -> None:
    DATA.mkdir(exist_ok=True)
    cancer = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    cancer.columns = [c.replace(" ", "_") for c in cancer.columns]
    cancer.round(6).to_csv(DATA / "breast_cancer.csv", index=False)
    x, y = make_friedman1(n_samples=1000, n_features=8, noise=1.0, random_state=7)
    friedman = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])]).assign(y=y)
    friedman.round(6).to_csv(DATA / "friedman1.csv", index=False)


if __name__ == "__main__":
    main()
