"""The container job scripts on bad input: a clear reason naming file/column/value, no outputs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import DATA, ROOT


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "containers" / name / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


preprocess = load_job("preprocess")
train = load_job("train")


def run_preprocess(tmp_path: Path, csv_text: str | None, *extra: str, monkeypatch=None):
    data = tmp_path / "input"
    data.mkdir()
    if csv_text is not None:
        (data / "data.csv").write_text(csv_text)
    output, failure = tmp_path / "output", tmp_path / "sm-output"
    failure.mkdir()
    if monkeypatch:
        monkeypatch.setenv("SM_OUTPUT_DIR", str(failure))
    args = ["--input-dir", str(data), "--output-dir", str(output), "--target", "label", "--task", "classification"]
    preprocess.main([*args, *extra])
    return output


GOOD_ROWS = "a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(40))


def test_good_csv_is_split_and_fingerprinted(tmp_path):
    output = run_preprocess(tmp_path, GOOD_ROWS)
    sizes = {part: len(pd.read_csv(output / part / f"{part}.csv")) for part in ("train", "validation", "test")}
    assert sum(sizes.values()) == 40 and sizes["test"] == 8
    schema = json.loads((output / "schema" / "schema.json").read_text())
    assert schema["features"] == ["a", "b"] and schema["classes"] == [0, 1]
    assert len(schema["source"]["sha256"]) == 64


def test_the_training_split_gets_a_model_monitor_baseline(tmp_path):
    rows = "a,b,label\n" + "".join(f"{i},{i * 0.5 - 3},{i % 2}\n" for i in range(3000))
    output = run_preprocess(tmp_path, rows)
    train_rows = pd.read_csv(output / "train" / "train.csv")
    statistics = json.loads((output / "baseline" / "statistics.json").read_text())
    constraints = json.loads((output / "baseline" / "constraints.json").read_text())
    assert statistics["dataset"] == {"item_count": len(train_rows)}
    by_name = {f["name"]: f for f in statistics["features"]}
    assert list(by_name) == ["a", "b"] and by_name["a"]["inferred_type"] == "Integral"
    b = by_name["b"]["numerical_statistics"]
    assert by_name["b"]["inferred_type"] == "Fractional"
    assert b["common"] == {"num_present": len(train_rows), "num_missing": 0}
    assert b["mean"] == pytest.approx(train_rows["b"].mean())
    assert b["std_dev"] == pytest.approx(train_rows["b"].std(ddof=0))  # population, as Deequ (Model Monitor)
    assert (b["min"], b["max"], b["sum"]) == pytest.approx(
        (train_rows["b"].min(), train_rows["b"].max(), train_rows["b"].sum())
    )
    buckets = b["distribution"]["kll"]["buckets"]
    assert len(buckets) == 10 and sum(x["count"] for x in buckets) == len(train_rows)
    assert buckets[0]["lower_bound"] == b["min"] and buckets[-1]["upper_bound"] == b["max"]
    sketch = b["distribution"]["kll"]["sketch"]
    assert sketch["parameters"] == {"c": 0.64, "k": 2048.0} and len(sketch["data"][0]) == 2048  # 2100 rows: quantiles
    assert sketch["data"][0] == sorted(sketch["data"][0])
    checks = [(f["name"], f["completeness"], f["num_constraints"]["is_non_negative"]) for f in constraints["features"]]
    assert checks == [("a", 1.0, True), ("b", 1.0, False)]
    comparison = constraints["monitoring_config"]["distribution_constraints"]
    assert comparison == {"perform_comparison": "Enabled", "comparison_threshold": 0.1, "comparison_method": "Robust"}


@pytest.mark.parametrize(
    ("csv_text", "extra", "expected"),
    [
        (None, [], "no .csv file"),
        ("", [], "data.csv: file is empty"),
        ("a,b,label\n", [], "data.csv: header only, no data rows"),
        ('a,b,label\n1,2,0\n3,"4,1\n', [], "data.csv: malformed CSV"),
        ("a,b\n1,2\n", [], "data.csv: target column 'label' not found (columns: a, b)"),
        (GOOD_ROWS, ["--features", "a,zzz"], "feature column(s) not found: zzz"),
        (GOOD_ROWS.replace("\n5,10,1\n", "\n5,ten,1\n"), [], "column 'b' has a non-numeric value 'ten' at data row 6"),
        (
            GOOD_ROWS.replace("\n5,10,1\n", "\n5,,1\n"),
            [],
            "column 'b' has 1 missing (NaN) value(s), first at data row 6",
        ),
        (GOOD_ROWS.replace("\n5,10,1\n", "\n5,10,\n"), [], "target column 'label' has 1 missing value(s)"),
        ("a,b,label\n" + "1,2,yes\n" * 30, [], "single class ('yes')"),
        ("a,b,label\n1,2,0\n3,4,1\n5,6,0\n", [], "3 data rows is too few to split"),
        ("a,b,label\n" + "1,2,0\n" * 20 + "1,2,1\n", [], "cannot split 21 rows"),
    ],
)
def test_bad_data_fails_with_a_named_reason_and_writes_nothing(tmp_path, monkeypatch, csv_text, extra, expected):
    with pytest.raises(SystemExit) as stop:
        run_preprocess(tmp_path, csv_text, *extra, monkeypatch=monkeypatch)
    assert expected in str(stop.value)
    assert expected in (tmp_path / "sm-output" / "message").read_text()
    assert not (tmp_path / "output").exists()


def test_training_script_takes_hyperparameters_as_sagemaker_passes_them(tmp_path, monkeypatch):
    output = run_preprocess(tmp_path, (DATA / "breast_cancer.csv").read_text().replace("label", "label", 1))
    model_dir = tmp_path / "model"
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(output / "train"))
    monkeypatch.setenv("SM_CHANNEL_SCHEMA", str(output / "schema"))
    train.main(
        [
            "--model_class",
            "sklearn.linear_model.LogisticRegression",
            "--C",
            "0.5",
            "--max_iter",
            "500",
            "--fit_intercept",
            "True",
            "--class_weight",
            "null",
        ]
    )
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["hyperparameters"] == {"C": 0.5, "max_iter": 500, "fit_intercept": True, "class_weight": None}
    assert (model_dir / "model.joblib").stat().st_size > 0


@pytest.mark.parametrize("ending", ["\n", ""], ids=["newline-terminated", "unterminated"])
@pytest.mark.parametrize("labels", [(0, 1), ("no", "yes")], ids=["numeric", "text"])
def test_the_job_fits_the_model_pipeline_fit_makes_from_the_frame(tmp_path, monkeypatch, ending, labels):
    """Read into one array and scaled in place, the job's model is the one `Pipeline.fit` makes from the frame."""
    import joblib
    import numpy as np

    random = np.random.default_rng(3)
    rows = pd.DataFrame(random.normal(size=(250_123, 3)), columns=["a", "b", "c"])  # 3 chunks, the last partial
    rows["label"] = np.where(rows["a"] + random.normal(size=len(rows)) > 0, *labels[::-1])
    folders = {name: tmp_path / name for name in ("train", "schema", "model")}
    for folder in folders.values():
        folder.mkdir()
    (folders["train"] / "train.csv").write_text(rows.to_csv(index=False).removesuffix("\n") + ending)
    schema = {"task": "classification", "target": "label", "features": ["c", "a", "b"]}  # not the file's order
    (folders["schema"] / "schema.json").write_text(json.dumps(schema))
    for name, folder in (("SM_MODEL_DIR", "model"), ("SM_CHANNEL_TRAIN", "train"), ("SM_CHANNEL_SCHEMA", "schema")):
        monkeypatch.setenv(name, str(folders[folder]))
    hyperparameters = {"n_estimators": 3, "max_depth": 4, "random_state": 0}
    train.main(["--model_class", "sklearn.ensemble.RandomForestClassifier", "--n_estimators", "3", "--max_depth", "4",
                "--random_state", "0"])  # fmt: skip
    expected = train.build_estimator("sklearn.ensemble.RandomForestClassifier", hyperparameters)
    frame = pd.read_csv(folders["train"] / "train.csv")  # what the job fitted on before: the parsed frame
    expected.fit(frame[schema["features"]], frame["label"])
    fitted = joblib.load(folders["model"] / "model.joblib")
    for name in ("mean_", "var_", "scale_", "n_samples_seen_", "feature_names_in_"):
        np.testing.assert_array_equal(getattr(fitted["scale"], name), getattr(expected["scale"], name))
    assert len(fitted["model"].estimators_) == len(expected["model"].estimators_) == 3
    for tree, same in zip(fitted["model"].estimators_, expected["model"].estimators_, strict=True):
        state, expected_state = tree.tree_.__getstate__(), same.tree_.__getstate__()
        assert state.keys() == expected_state.keys()
        for key, value in state.items():
            np.testing.assert_array_equal(value, expected_state[key], err_msg=key)
    np.testing.assert_array_equal(fitted.predict_proba(frame[schema["features"]]),
                                  expected.predict_proba(frame[schema["features"]]))  # fmt: skip
    assert list(fitted.feature_names_in_) == schema["features"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model_class", "sklearn.tree.NoTree"], "no such scikit-learn estimator"),
        (["--model_class", "sklearn.tree.DecisionTreeClassifier", "--depth", "3"], "depth not accepted"),
        (["--model_class", "sklearn.tree.DecisionTreeClassifier", "--max_depth", "-2"], "max_depth"),
        (["--model_class", "os.path.join"], "only scikit-learn estimators"),
    ],
)
def test_training_script_rejects_bad_hyperparameters(tmp_path, monkeypatch, argv, expected):
    output = run_preprocess(tmp_path, GOOD_ROWS)
    failure = tmp_path / "sm-output"
    monkeypatch.setenv("SM_OUTPUT_DIR", str(failure))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(output / "train"))
    monkeypatch.setenv("SM_CHANNEL_SCHEMA", str(output / "schema"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert expected in str(stop.value)
    assert expected in (failure / "failure").read_text()
    assert not (tmp_path / "model").exists()


def test_duplicate_column_names_are_an_error_naming_the_column(tmp_path, monkeypatch):
    rows = "a,b,a,label\n" + "".join(f"{i},{i},{i},{i % 2}\n" for i in range(40))
    with pytest.raises(SystemExit, match=r"data\.csv: duplicate column name\(s\) in the header: a"):
        run_preprocess(tmp_path, rows, monkeypatch=monkeypatch)
    assert not (tmp_path / "output").exists()
    assert "duplicate column name(s) in the header: a" in (tmp_path / "sm-output" / "message").read_text()


def test_a_utf8_bom_is_accepted_by_training_and_by_the_model_server(tmp_path):
    output = run_preprocess(tmp_path, "\ufeff" + GOOD_ROWS)
    schema = json.loads((output / "schema" / "schema.json").read_text())
    assert schema["features"] == ["a", "b"]  # not "\ufeffa"
    inference = load_job_file("inference", "inference.py")
    model = inference.Model(None, {"features": ["a", "b"], "task": "classification"})
    bom = b"\xef\xbb\xbf"
    assert inference.input_fn(bom + b"1,2\n3,4\n", "text/csv", model).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert inference.input_fn(bom + b'{"instances": [[1, 2]]}', "application/json", model).tolist() == [[1.0, 2.0]]


def load_job_file(folder: str, script: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_{script[:-3]}", ROOT / "containers" / folder / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_channels(tmp_path: Path, channels: dict[str, str], monkeypatch) -> Path:
    for channel, text in channels.items():
        (tmp_path / "input" / channel).mkdir(parents=True)
        (tmp_path / "input" / channel / f"{channel}.csv").write_text(text)
    failure = tmp_path / "sm-output"
    failure.mkdir()
    monkeypatch.setenv("SM_OUTPUT_DIR", str(failure))
    output = tmp_path / "output"
    preprocess.main(["--input-dir", str(tmp_path / "input"), "--output-dir", str(output), "--target", "label",
                     "--task", "classification", "--channels", ",".join(sorted(channels))])  # fmt: skip
    return output


def test_channels_are_kept_as_given_not_split(tmp_path, monkeypatch):
    rows = GOOD_ROWS.splitlines(keepends=True)
    output = run_channels(tmp_path, {"train": "".join(rows[:31]), "test": rows[0] + "".join(rows[31:])}, monkeypatch)
    assert len(pd.read_csv(output / "train" / "train.csv")) == 30
    assert len(pd.read_csv(output / "test" / "test.csv")) == 10
    assert (output / "validation").is_dir() and not any((output / "validation").iterdir())
    schema = json.loads((output / "schema" / "schema.json").read_text())
    assert schema["rows"] == {"train": 30, "test": 10} and schema["source"]["files"] == ["test.csv", "train.csv"]


@pytest.mark.parametrize(
    ("test_text", "expected"),
    [
        ("a,label\n1,0\n2,1\n", "channel test: missing column(s) b"),
        ("a,b,c,label\n1,2,3,0\n2,3,4,1\n", "channel test: column(s) c not in channel train"),
        ("a,b,label\n1,x,0\n2,3,1\n", "channel test: column 'b' has a non-numeric value 'x' at data row 1"),
    ],
)
def test_a_channel_that_does_not_match_train_is_named_with_its_column(tmp_path, monkeypatch, test_text, expected):
    with pytest.raises(SystemExit, match=re.escape(expected)):
        run_channels(tmp_path, {"train": GOOD_ROWS, "test": test_text}, monkeypatch)
    assert expected in (tmp_path / "sm-output" / "message").read_text()
    assert not (tmp_path / "output").exists()


def test_evaluation_ranks_the_features_the_model_uses_by_permutation_importance(tmp_path):
    """The label depends on `signal` only: shuffling it costs accuracy, shuffling the others does not."""
    import tarfile

    import joblib
    import numpy as np

    evaluate = load_job("evaluate")
    random = np.random.default_rng(0)
    rows = pd.DataFrame({"noise": random.normal(size=600), "signal": random.normal(size=600)})
    rows["other"] = random.normal(size=600)
    rows["label"] = (rows["signal"] > 0).astype(int)
    features = ["noise", "signal", "other"]
    metadata = {"task": "classification", "target": "label", "features": features, "classes": [0, 1]}
    model = train.build_estimator("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 20, "random_state": 0})
    model.fit(rows[metadata["features"]][:400], rows["label"][:400])
    model_dir, test_dir, output = tmp_path / "model", tmp_path / "test", tmp_path / "evaluation"
    model_dir.mkdir()
    test_dir.mkdir()
    packed = tmp_path / "packed"
    packed.mkdir()
    joblib.dump(model, packed / "model.joblib")
    (packed / "metadata.json").write_text(json.dumps(metadata))
    with tarfile.open(model_dir / "model.tar.gz", "w:gz") as tar:
        for name in ("model.joblib", "metadata.json"):
            tar.add(packed / name, arcname=name)
    rows[400:].to_csv(test_dir / "test.csv", index=False)
    evaluate.main(["--model-dir", str(model_dir), "--test-dir", str(test_dir), "--output-dir", str(output)])
    report = json.loads((output / "evaluation.json").read_text())
    importance = report["feature_importance"]
    assert (importance["method"], importance["scoring"], importance["n_repeats"]) == ("permutation", "accuracy", 3)
    ranked = importance["features"]
    assert ranked[0]["name"] == "signal" and ranked[0]["importance_mean"] > 0.3
    assert all(abs(f["importance_mean"]) < 0.05 for f in ranked[1:])
    assert "feature_importance.png" in report["plots"] and (output / "feature_importance.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("task", "model_class", "rows", "cells"),
    [
        ("classification", "sklearn.ensemble.RandomForestClassifier", 2600, 4_000_000),  # sampled to 2000 rows
        ("classification", "sklearn.linear_model.LogisticRegression", 300, 4_000),  # every row; 3 predicts
        ("regression", "sklearn.ensemble.RandomForestRegressor", 2300, 50_000),  # sampled; a copy per predict
    ],
)
def test_permutation_importance_is_scikit_learns_scored_in_chunks(task, model_class, rows, cells, monkeypatch):
    """The evaluate job's batched permutation importance gives what `sklearn.inspection.permutation_importance`
    gives with the same settings: the same sampled rows, the same shuffles, the same scores."""
    import numpy as np
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import accuracy_score, r2_score

    evaluate = load_job("evaluate")
    monkeypatch.setattr(evaluate, "IMPORTANCE_CELLS", cells)
    random = np.random.default_rng(1)
    frame = pd.DataFrame(random.normal(size=(rows, 4)), columns=["a", "b", "c", "d"])
    signal = frame["a"] * 2 + frame["b"] - frame["c"] * 0.5 + random.normal(scale=0.3, size=rows)
    frame["target"] = (signal > 0).astype(int) if task == "classification" else signal
    features = ["a", "b", "c", "d"]
    model = train.build_estimator(model_class, {"random_state": 0} if "Forest" in model_class else {})
    model.fit(frame[features][:1000], frame["target"][:1000])
    test = frame[1000:] if rows > 1000 else frame
    metadata = {"task": task, "target": "target", "features": features}
    scoring = "accuracy" if task == "classification" else "r2"
    expected = permutation_importance(
        model, test[features], test["target"], scoring=scoring, n_repeats=evaluate.IMPORTANCE_REPEATS,
        random_state=0, max_samples=min(len(test), evaluate.IMPORTANCE_ROWS),
    )  # fmt: skip
    score = accuracy_score if task == "classification" else r2_score
    baseline = score(test["target"], model.predict(test[features]))
    report = evaluate.feature_importance(model, test, metadata, baseline)
    got = {f["name"]: (f["importance_mean"], f["importance_std"]) for f in report["features"]}
    for i, name in enumerate(features):
        assert got[name] == pytest.approx(
            (round(expected.importances_mean[i], 6), round(expected.importances_std[i], 6)), abs=1e-6
        ), name
    assert report["features"][0]["name"] == "a" and report["features"][0]["importance_mean"] > 0.05


def general_csv(text: str) -> list[list[float]]:
    """What `float()` makes of each value: the reference the model server's fast path must match."""
    return [[float(value) for value in line.split(",")] for line in text.strip().splitlines() if line.strip()]


CSV_NUMBER = (
    st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.integers(-(2**70), 2**70).map(str)
    | (st.sampled_from(["1e5", "-2.5E-3", "0.10000000000000001", "123456789012345678", "+1", ".5", "7.", "01", "-0.0"]))
)


CSV_ROWS = st.integers(1, 6).flatmap(
    lambda width: st.lists(st.lists(CSV_NUMBER, min_size=width, max_size=width), min_size=1, max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(rows=CSV_ROWS, ending=st.sampled_from(["\n", "\r\n"]))
def test_the_model_server_reads_csv_numbers_exactly_as_float_does(rows, ending):
    inference = load_job_file("inference", "inference.py")
    text = ending.join(",".join(row) for row in rows) + ending
    parsed = inference.input_fn(text.encode(), "text/csv")
    assert parsed.tolist() == general_csv(text)
    as_json = ("[" + ",".join("[" + ",".join(row) + "]" for row in rows) + "]").encode()
    try:
        expected = json.loads(as_json)  # "+1", ".5", "01", "7." are not JSON numbers
    except ValueError:
        return
    assert inference.input_fn(as_json, "application/json").tolist() == [[float(v) for v in row] for row in expected]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"true,1\n", "CSV values must be numbers"),  # JSON would read true as 1
        (b"null,1\n", "CSV values must be numbers"),
        (b"1,2\n3\n", "CSV rows have different numbers of values: [1, 2]"),
        (b"1,,2\n", "CSV values must be numbers"),
        (b"1,2,\n", "CSV values must be numbers"),
        (b"[1,2]\n", "CSV values must be numbers"),
    ],
)
def test_csv_that_is_not_plain_numbers_gets_the_general_parsers_message(body, message):
    inference = load_job_file("inference", "inference.py")
    with pytest.raises(inference.RequestError) as error:
        inference.input_fn(body, "text/csv")
    assert message in str(error.value)


def test_csv_blank_lines_and_python_float_syntax_still_read():
    inference = load_job_file("inference", "inference.py")
    assert inference.input_fn(b"1,2\n\n+3,.5\n", "text/csv").tolist() == [[1.0, 2.0], [3.0, 0.5]]
    with pytest.raises(inference.RequestError, match="row 0 has a missing or non-finite value"):
        inference.input_fn(b"[[1, NaN]]", "application/json")  # orjson refuses NaN; json reads it, then it is refused


TEXTS = st.text(max_size=5) | st.sampled_from(["a,b", 'q"q', "x\ny", "", "nan", " 1"])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(0, 6).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(allow_nan=False), min_size=n, max_size=n),
            st.lists(st.floats(allow_nan=False, allow_infinity=False).map(round), min_size=n, max_size=n),
            st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n),
            st.lists(TEXTS, min_size=n, max_size=n),
        )
    ),
    text_target=st.booleans(),
)
def test_the_splits_read_back_as_pandas_own_csv_reads_back(tmp_path_factory, rows, text_target):
    """write_csv is pyarrow's writer when it can be: what reads back must be what pandas' to_csv gives."""
    floats, integral, integers, texts = rows
    frame = pd.DataFrame({"f": floats, "whole": integral, "n": integers}).astype({"f": float, "whole": float})
    frame["label"] = texts if text_target else integers
    folder = tmp_path_factory.mktemp("csv")
    preprocess.write_csv(frame, folder / "fast.csv")
    frame.to_csv(folder / "pandas.csv", index=False)
    fast, slow = pd.read_csv(folder / "fast.csv"), pd.read_csv(folder / "pandas.csv")
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
