"""Tests for msdgcn.metrics: AP, the threshold metrics, top-3, the CSV format and the CLI."""

import argparse
import json
import logging
import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from msdgcn import metrics
from msdgcn.metrics import (
    add_evaluate_arguments,
    average_precision,
    evaluate_csv,
    multilabel_metrics,
    predict_labels,
    read_matrix_csv,
    run_evaluate,
    write_matrix_csv,
)

METRIC_KEYS = ["CP", "CR", "CF1", "OP", "OR", "OF1", "macro_F1"]
RESULT_KEYS = {
    "mAP",
    *METRIC_KEYS,
    "top3",
    "per_class_AP",
    "classes_without_positives",
    "protocol",
}


def column(values):
    return np.array(values, dtype=float).reshape(-1, 1)


# ---------------------------------------------------------------------------
# Average precision
# ---------------------------------------------------------------------------


def test_average_precision_hand_worked():
    # Positives at ranks 1 and 3: precision 1/1 and 2/3.
    ap = average_precision(column([0.9, 0.8, 0.7, 0.6]), column([1, 0, 1, 0]))
    assert ap.shape == (1,)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-15)


def test_average_precision_ignores_difficult_entry():
    scores = column([0.95, 0.9, 0.8, 0.7, 0.6])
    targets = column([-1, 1, 0, 1, 0])
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-15)


def test_average_precision_difficult_tied_positive():
    # The difficult entry shares the top score with a positive and must not lower its precision.
    scores = column([0.9, 0.9, 0.8, 0.7, 0.6])
    targets = column([-1, 1, 0, 1, 0])
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-15)


def test_average_precision_all_tied_prevalence():
    targets = column([1, 0, 0, 1, 0, 0, 1, 0])
    ap = average_precision(np.full((8, 1), 0.5), targets)
    assert ap[0] == pytest.approx(3 / 8, abs=1e-15)


def test_average_precision_tie_group_threshold():
    # Scores 0.9 | 0.8 0.8 | 0.3 with targets 1 | 0 1 | 1. The precision is 1/1 at 0.9,
    # 2/3 at 0.8 (both tied items count) and 3/4 at 0.3, so AP = (1 + 2/3 + 3/4) / 3.
    ap = average_precision(column([0.9, 0.8, 0.8, 0.3]), column([1, 0, 1, 1]))
    assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-15)


def test_average_precision_no_positives_nan():
    scores = np.array([[0.9, 0.2], [0.1, 0.8]])
    targets = np.array([[1, 0], [0, -1]])
    ap = average_precision(scores, targets)
    assert ap[0] == 1.0
    assert np.isnan(ap[1])


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(7)
    num_images, num_classes = 90, 24
    scores = np.round(rng.random((num_images, num_classes)), 1)
    targets = (rng.random((num_images, num_classes)) < 0.3).astype(int)
    targets[rng.random((num_images, num_classes)) < 0.1] = -1
    # Every class keeps at least one positive, so every column is compared with sklearn.
    targets[0, :] = 1

    ap = average_precision(scores, targets)

    for c in range(num_classes):
        kept = targets[:, c] != -1
        expected = average_precision_score(targets[kept, c], scores[kept, c])
        assert ap[c] == pytest.approx(expected, abs=1e-12), f"class {c}"


def test_average_precision_rejects_invalid_target():
    with pytest.raises(ValueError, match=r"entry \(1, 0\) is 2"):
        average_precision(column([0.9, 0.1]), column([1, 2]))


# ---------------------------------------------------------------------------
# Threshold metrics
# ---------------------------------------------------------------------------


def test_map_skips_class_without_positives(caplog):
    scores = np.array([[0.9, 0.6, 0.3], [0.8, 0.7, 0.2], [0.7, 0.8, 0.1], [0.6, 0.9, 0.4]])
    targets = np.array([[1, 1, 0], [0, 0, 0], [1, 0, -1], [0, 0, 0]])
    names = ["cat", "dog", "unicorn"]

    with caplog.at_level(logging.WARNING, logger="msdgcn.metrics"):
        result = multilabel_metrics(scores, targets, names)

    ap = average_precision(scores, targets)
    assert np.isnan(ap[2])
    assert result["per_class_AP"]["unicorn"] is None
    assert result["per_class_AP"]["cat"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    # dog: the only positive has the lowest dog score of 4 images, so AP = 1/4.
    assert result["per_class_AP"]["dog"] == pytest.approx(1 / 4, abs=1e-15)
    assert result["classes_without_positives"] == ["unicorn"]
    assert result["mAP"] == (ap[0] + ap[1]) / 2
    assert result["protocol"]["num_classes_in_mAP"] == 2
    assert result["protocol"]["num_ignored_entries"] == 1
    assert "unicorn" in caplog.text


def test_cf1_differs_from_macro_f1():
    # Class a: predicted on images 0-2, positives 0-1 -> TP 2, FP 1, FN 0: P 2/3, R 1, F1 4/5.
    # Class b: predicted on image 0, positives 0 and 2 -> TP 1, FP 0, FN 1: P 1, R 1/2, F1 2/3.
    scores = np.array([[0.9, 0.6], [0.8, 0.2], [0.7, 0.3], [0.1, 0.1]])
    targets = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    result = multilabel_metrics(scores, targets, ["a", "b"])

    cp = (2 / 3 + 1) / 2
    cr = (1 + 1 / 2) / 2
    assert result["CP"] == pytest.approx(cp, abs=1e-15)
    assert result["CR"] == pytest.approx(cr, abs=1e-15)
    assert result["CF1"] == pytest.approx(15 / 19, abs=1e-15)
    assert result["CF1"] == pytest.approx(2 * cp * cr / (cp + cr), abs=1e-15)
    assert result["macro_F1"] == pytest.approx((4 / 5 + 2 / 3) / 2, abs=1e-15)
    assert abs(result["CF1"] - result["macro_F1"]) > 0.05


def test_cp_never_predicted_class_zero():
    # Class a: TP 1, FP 1 -> P 1/2. Class b: never predicted -> P 0. Class c: TP 1 -> P 1.
    scores = np.array([[0.9, 0.4, 0.7], [0.6, 0.3, 0.2], [0.1, 0.2, 0.1]])
    targets = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 0]])
    result = multilabel_metrics(scores, targets, ["a", "b", "c"])

    assert result["CP"] == pytest.approx((1 / 2 + 0 + 1) / 3, abs=1e-15)
    # Recalls: a 1/2, b 0/2, c 1/1.
    assert result["CR"] == pytest.approx((1 / 2 + 0 + 1) / 3, abs=1e-15)


def test_overall_precision_recall_f1():
    # Predicted entries: (0,a) TP, (0,b) FP, (1,a) TP, (2,b) TP, (2,c) FP.
    # Missed positives: (1,c), (2,a). Totals TP 3, FP 2, FN 2.
    # The difficult entry (1,b) is predicted but not counted.
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.9, 0.3], [0.2, 0.6, 0.5]])
    targets = np.array([[1, 0, 0], [1, -1, 1], [1, 1, 0]])
    result = multilabel_metrics(scores, targets, ["a", "b", "c"])

    assert result["OP"] == pytest.approx(3 / 5, abs=1e-15)
    assert result["OR"] == pytest.approx(3 / 5, abs=1e-15)
    assert result["OF1"] == pytest.approx(3 / 5, abs=1e-15)


def test_overall_precision_differs_from_recall():
    # TP 2 ((0,a), (1,b)), FP 2 ((0,b), (1,a)), FN 1 ((2,a)).
    scores = np.array([[0.9, 0.8], [0.7, 0.6], [0.1, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    result = multilabel_metrics(scores, targets, ["a", "b"])

    assert result["OP"] == pytest.approx(2 / 4, abs=1e-15)
    assert result["OR"] == pytest.approx(2 / 3, abs=1e-15)
    assert result["OF1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3), abs=1e-15)


def test_metrics_zero_when_nothing_predicted():
    scores = np.full((3, 2), 0.1)
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    result = multilabel_metrics(scores, targets, ["a", "b"])
    for key in METRIC_KEYS:
        assert result[key] == 0.0, key
        assert result["top3"][key] == 0.0, key


def test_multilabel_metrics_rejects_logits():
    with pytest.raises(ValueError, match="sigmoid"):
        multilabel_metrics(np.array([[2.5, -1.0]]), np.array([[1, 0]]), ["a", "b"])


def test_multilabel_metrics_rejects_no_positives():
    with pytest.raises(ValueError, match="mAP is undefined"):
        multilabel_metrics(np.array([[0.5, 0.5]]), np.array([[0, -1]]), ["a", "b"])


# ---------------------------------------------------------------------------
# Top-3
# ---------------------------------------------------------------------------

TOP3_SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.55, 0.1],  # five above 0.5: only classes 0, 1, 2
        [0.9, 0.7, 0.4, 0.3, 0.2, 0.1],  # third best is 0.4: only classes 0, 1
        [0.2, 0.6, 0.9, 0.6, 0.6, 0.1],  # three-way tie at 0.6: classes 1 and 3 win
    ]
)
TOP3_TARGETS = np.array(
    [
        [1, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 1, 0, 1, 0],
    ]
)


def test_predict_labels_top3_masks():
    predicted = predict_labels(TOP3_SCORES, threshold=0.5, top_k=3)
    expected = np.array(
        [
            [True, True, True, False, False, False],
            [True, True, False, False, False, False],
            [False, True, True, True, False, False],
        ]
    )
    np.testing.assert_array_equal(predicted, expected)


def test_predict_labels_threshold_is_inclusive():
    predicted = predict_labels(np.array([[0.5, 0.4999]]), threshold=0.5)
    np.testing.assert_array_equal(predicted, [[True, False]])


def test_top3_metrics_hand_worked():
    result = multilabel_metrics(TOP3_SCORES, TOP3_TARGETS, list("abcdef"))
    top3 = result["top3"]

    # Top-3 predictions: image 0 -> a b c, image 1 -> a b, image 2 -> b c d.
    # Per class (TP, FP, FN): a (2,0,0), b (1,2,0), c (1,1,1), d (0,1,1), e (0,0,2), f (0,0,0).
    assert top3["OP"] == pytest.approx(4 / 8, abs=1e-15)
    assert top3["OR"] == pytest.approx(4 / 8, abs=1e-15)
    assert top3["CP"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 0 + 0 + 0) / 6, abs=1e-15)
    assert top3["CR"] == pytest.approx((1 + 1 + 1 / 2 + 0 + 0) / 5, abs=1e-15)
    assert top3["macro_F1"] == pytest.approx((1 + 1 / 2 + 1 / 2 + 0 + 0) / 5, abs=1e-15)

    # Without the top-3 limit, image 0 also predicts d and e, and image 2 also predicts e.
    # Per class (TP, FP, FN): a (2,0,0), b (1,2,0), c (1,1,1), d (1,1,0), e (2,0,0).
    assert result["OP"] == pytest.approx(7 / 11, abs=1e-15)
    assert result["OR"] == pytest.approx(7 / 8, abs=1e-15)


def test_top3_difficult_entry_takes_rank():
    # Class a is difficult but still takes the first rank, so d falls out of the top 3.
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    targets = np.array([[-1, 1, 1, 1]])
    result = multilabel_metrics(scores, targets, list("abcd"))

    assert result["top3"]["OP"] == 1.0
    assert result["top3"]["OR"] == pytest.approx(2 / 3, abs=1e-15)
    assert result["OR"] == 1.0


# ---------------------------------------------------------------------------
# CSV files
# ---------------------------------------------------------------------------

CLASS_NAMES = ["person", "traffic light", "dog"]
LABELS = np.array([[1, 0, -1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
PREDICTIONS = np.array(
    [[0.9, 0.2, 0.7], [0.4, 0.8, 0.1], [0.6, 0.55, 0.3], [0.3, 0.1, 0.85]]
)
IMAGE_IDS = ["img_1", "img_2", "img 3", "img,4"]


@pytest.fixture
def csv_pair(tmp_path):
    predictions_path = tmp_path / "predictions.csv"
    labels_path = tmp_path / "labels.csv"
    write_matrix_csv(predictions_path, IMAGE_IDS, CLASS_NAMES, PREDICTIONS)
    write_matrix_csv(labels_path, IMAGE_IDS, CLASS_NAMES, LABELS, fmt="%d")
    return predictions_path, labels_path


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_round_trip(tmp_path):
    path = tmp_path / "scores.csv"
    matrix = np.random.default_rng(1).random((5, 3))
    ids = ["a", "b,c", 'quote"d', "e", "f"]
    write_matrix_csv(path, ids, CLASS_NAMES, matrix, fmt="%.17g")

    read_ids, read_names, read_matrix = read_matrix_csv(path)

    assert read_ids == ids
    assert read_names == CLASS_NAMES
    np.testing.assert_array_equal(read_matrix, matrix)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_read_matrix_csv_reorders_columns(tmp_path):
    path = write_text(tmp_path / "m.csv", "image,b,a\nx,1,2\ny,3,4\n")
    ids, names, matrix = read_matrix_csv(path, class_names=["a", "b"])
    assert ids == ["x", "y"]
    assert names == ["a", "b"]
    np.testing.assert_array_equal(matrix, [[2, 1], [4, 3]])


def test_write_matrix_csv_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    write_matrix_csv(path, ["x"], ["a"], np.array([[0.25]]))
    original = path.read_text()

    def failing_replace(source, destination):
        raise OSError("simulated interruption")

    monkeypatch.setattr(metrics.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated interruption"):
        write_matrix_csv(path, ["y"], ["a"], np.array([[0.75]]))

    assert path.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"bad\.csv: file is empty"),
        ("\n\n", r"bad\.csv: file is empty"),
        ("id,a,b\nx,1,0\n", r"bad\.csv: line 1: the first header column is 'id'"),
        ("image\nx\n", r"bad\.csv: line 1: the header has no class columns"),
        ("image,a,b,a\nx,1,0,1\n", r"bad\.csv: line 1: duplicate class names .*'a'"),
        ("image,a,b\n", r"bad\.csv: the file has a header but no image rows"),
        ("image,a,b\nx,1,0\ny,0,1\nx,1,1\n", r"bad\.csv: line 4: duplicate image id 'x'.*line 2"),
        ("image,a,b\nx,1,0\ny,0\n", r"bad\.csv: line 3: expected 3 fields .* found 2"),
        (
            "image,a,b\nx,1,0\ny,0,yes\n",
            r"bad\.csv: line 3, column 'b': value 'yes' is not a number",
        ),
        ("image,a,b\nx,1,\n", r"bad\.csv: line 2, column 'b': value '' is not a number"),
        ("image,a,b\nx,1,0\ny,nan,1\n", r"bad\.csv: line 3, column 'a': value 'nan' is not finite"),
        ("image,a,b\nx,inf,0\n", r"bad\.csv: line 2, column 'a': value 'inf' is not finite"),
    ],
)
def test_read_matrix_csv_rejects_bad_file(tmp_path, text, pattern):
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=pattern):
        read_matrix_csv(path)


def test_read_matrix_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.csv"):
        read_matrix_csv(tmp_path / "absent.csv")


def test_read_matrix_csv_lists_class_differences(tmp_path):
    path = write_text(tmp_path / "m.csv", "image,a,b,zebra\nx,1,0,1\n")
    with pytest.raises(ValueError, match=r"m\.csv.*Missing: \['c'\].*Unexpected: \['zebra'\]"):
        read_matrix_csv(path, class_names=["a", "b", "c"])


# ---------------------------------------------------------------------------
# evaluate_csv
# ---------------------------------------------------------------------------


def test_evaluate_csv_matches_array_metrics(csv_pair):
    predictions_path, labels_path = csv_pair
    result = evaluate_csv(predictions_path, labels_path)

    expected = multilabel_metrics(PREDICTIONS, LABELS, CLASS_NAMES)
    for key in ["mAP", *METRIC_KEYS]:
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert result["protocol"]["source"] == {
        "predictions": str(predictions_path),
        "labels": str(labels_path),
    }


def test_evaluate_csv_matches_rows_by_image(tmp_path, csv_pair):
    predictions_path, labels_path = csv_pair
    order = [2, 0, 3, 1]
    shuffled_path = tmp_path / "shuffled.csv"
    write_matrix_csv(shuffled_path, [IMAGE_IDS[i] for i in order], CLASS_NAMES, PREDICTIONS[order])

    reference = evaluate_csv(predictions_path, labels_path)
    shuffled = evaluate_csv(shuffled_path, labels_path)

    del reference["protocol"]["source"], shuffled["protocol"]["source"]
    assert shuffled == reference


def test_evaluate_csv_reorders_prediction_columns(tmp_path, csv_pair):
    predictions_path, labels_path = csv_pair
    order = [2, 0, 1]
    reordered_path = tmp_path / "reordered.csv"
    write_matrix_csv(
        reordered_path, IMAGE_IDS, [CLASS_NAMES[i] for i in order], PREDICTIONS[:, order]
    )
    assert evaluate_csv(reordered_path, labels_path)["mAP"] == evaluate_csv(
        predictions_path, labels_path
    )["mAP"]


def test_evaluate_csv_writes_json(tmp_path, csv_pair):
    output_path = tmp_path / "out" / "metrics.json"
    result = evaluate_csv(*csv_pair, output_path=output_path)
    assert json.loads(output_path.read_text()) == result


def test_evaluate_csv_rejects_invalid_label(tmp_path, csv_pair):
    predictions_path, _ = csv_pair
    labels_path = write_text(
        tmp_path / "bad_labels.csv", "image,person,traffic light,dog\nimg_1,1,0,0\nimg_2,0,2,1\n"
    )
    pattern = r"bad_labels\.csv: line 3, column 'traffic light': label value 2 "
    with pytest.raises(ValueError, match=pattern):
        evaluate_csv(predictions_path, labels_path)


def test_evaluate_csv_rejects_logits(tmp_path, csv_pair):
    _, labels_path = csv_pair
    logits = PREDICTIONS.copy()
    logits[1, 2] = -1.5
    predictions_path = tmp_path / "logits.csv"
    write_matrix_csv(predictions_path, IMAGE_IDS, CLASS_NAMES, logits)
    pattern = r"logits\.csv: line 3, column 'dog': value -1\.5 .*not logits"
    with pytest.raises(ValueError, match=pattern):
        evaluate_csv(predictions_path, labels_path)


def test_evaluate_csv_rejects_different_classes(tmp_path, csv_pair):
    _, labels_path = csv_pair
    predictions_path = tmp_path / "other_classes.csv"
    write_matrix_csv(predictions_path, IMAGE_IDS, ["person", "cat", "dog"], PREDICTIONS)
    with pytest.raises(
        ValueError, match=r"other_classes\.csv.*Missing: \['traffic light'\].*Unexpected: \['cat'\]"
    ):
        evaluate_csv(predictions_path, labels_path)


def test_evaluate_csv_lists_unmatched_images(tmp_path):
    labels_ids = [f"img{i:03d}" for i in range(30)]
    predictions_ids = labels_ids[:5] + ["extra"]
    labels_path = tmp_path / "labels.csv"
    predictions_path = tmp_path / "predictions.csv"
    write_matrix_csv(labels_path, labels_ids, ["a"], np.ones((30, 1)), fmt="%d")
    write_matrix_csv(predictions_path, predictions_ids, ["a"], np.full((6, 1), 0.5))

    with pytest.raises(ValueError) as error:
        evaluate_csv(predictions_path, labels_path)

    message = str(error.value)
    assert re.search(r"ids in .*labels\.csv but not in .*predictions\.csv \(25\):", message)
    assert "'img024'" in message
    assert "'img025'" not in message
    assert "(5 more)" in message
    assert re.search(r"ids in .*predictions\.csv but not in .*labels\.csv \(1\): 'extra'", message)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_evaluate_arguments(arguments):
    parser = argparse.ArgumentParser(prog="msdgcn evaluate")
    add_evaluate_arguments(parser)
    return parser.parse_args(arguments)


def assert_fractions(result):
    assert set(result) == RESULT_KEYS
    assert set(result["top3"]) == set(METRIC_KEYS)
    for key in ["mAP", *METRIC_KEYS]:
        assert isinstance(result[key], float), key
        assert 0.0 <= result[key] <= 1.0, key
    for key in METRIC_KEYS:
        assert 0.0 <= result["top3"][key] <= 1.0, key
    for name, ap in result["per_class_AP"].items():
        assert 0.0 <= ap <= 1.0, name


def test_run_evaluate_writes_output(tmp_path, csv_pair, capsys):
    predictions_path, labels_path = csv_pair
    output_path = tmp_path / "metrics.json"
    args = parse_evaluate_arguments(
        [
            "--predictions", str(predictions_path),
            "--labels", str(labels_path),
            "--output", str(output_path),
        ]
    )

    assert run_evaluate(args) == 0

    result = json.loads(output_path.read_text())
    assert_fractions(result)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"mAP {100 * result['mAP']:.1f}%" in captured.err


def test_run_evaluate_prints_json_without_output(csv_pair, capsys):
    predictions_path, labels_path = csv_pair
    args = parse_evaluate_arguments(
        ["--predictions", str(predictions_path), "--labels", str(labels_path)]
    )

    assert run_evaluate(args) == 0

    assert_fractions(json.loads(capsys.readouterr().out))


def test_run_evaluate_raises_on_missing_file(tmp_path, csv_pair):
    _, labels_path = csv_pair
    args = parse_evaluate_arguments(
        ["--predictions", str(tmp_path / "nowhere.csv"), "--labels", str(labels_path)]
    )
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        run_evaluate(args)


# ---------------------------------------------------------------------------
# Vectorised metrics against plain per-class and per-image loops
# ---------------------------------------------------------------------------


def loop_average_precision(scores, targets, column):
    """AP of one class by walking its distinct scores from high to low, in plain Python."""
    entries = [(s, t) for s, t in zip(scores[:, column], targets[:, column]) if t != -1]
    num_positives = sum(1 for _, t in entries if t == 1)
    if num_positives == 0:
        return None
    total = 0.0
    for threshold in sorted({s for s, _ in entries}, reverse=True):
        at_threshold = [t for s, t in entries if s == threshold]
        above = [t for s, t in entries if s >= threshold]
        precision = sum(1 for t in above if t == 1) / len(above)
        total += precision * sum(1 for t in at_threshold if t == 1) / num_positives
    return total


def loop_top_k(scores, k):
    """Top-k mask: sort each row by (-score, class index) and keep the first k."""
    mask = np.zeros(scores.shape, dtype=bool)
    for row in range(scores.shape[0]):
        ranked = sorted(range(scores.shape[1]), key=lambda c: (-scores[row, c], c))
        mask[row, ranked[:k]] = True
    return mask


def loop_count_metrics(predicted, targets):
    """CP, CR, CF1, OP, OR, OF1 and macro_F1 from per-class counts gathered in a loop."""
    precisions, recalls, f1s = [], [], []
    totals = {"tp": 0, "fp": 0, "fn": 0}
    for c in range(targets.shape[1]):
        tp = fp = fn = 0
        for row in range(targets.shape[0]):
            if targets[row, c] == -1:
                continue
            if predicted[row, c] and targets[row, c] == 1:
                tp += 1
            elif predicted[row, c]:
                fp += 1
            elif targets[row, c] == 1:
                fn += 1
        totals["tp"] += tp
        totals["fp"] += fp
        totals["fn"] += fn
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        if tp + fn:
            recalls.append(tp / (tp + fn))
            f1s.append(2 * tp / (2 * tp + fp + fn))
    cp, cr = np.mean(precisions), np.mean(recalls)
    op = totals["tp"] / (totals["tp"] + totals["fp"]) if totals["tp"] + totals["fp"] else 0.0
    orr = totals["tp"] / (totals["tp"] + totals["fn"]) if totals["tp"] + totals["fn"] else 0.0
    return {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
        "OP": op,
        "OR": orr,
        "OF1": 2 * op * orr / (op + orr) if op + orr else 0.0,
        "macro_F1": np.mean(f1s),
    }


@pytest.fixture(scope="module")
def tied_random_case():
    """Scores on a 0.05 grid (many ties) and labels with 3% positives and 5% ignored entries."""
    rng = np.random.default_rng(11)
    num_images, num_classes = 400, 12
    targets = (rng.random((num_images, num_classes)) < 0.03).astype(np.int8)
    targets[rng.random((num_images, num_classes)) < 0.05] = -1
    targets[:, 0] = -1  # a class with only ignored entries
    targets[1:, 1] = 0  # a class with a single positive
    targets[0, 1] = 1
    scores = np.round(rng.random((num_images, num_classes)) * 20) / 20
    scores[:, 2] = 0.5  # a class whose scores are all tied
    targets[:5, 2] = 1
    return scores, targets


def test_average_precision_matches_loop(tied_random_case):
    scores, targets = tied_random_case
    ap = average_precision(scores, targets)
    for c in range(scores.shape[1]):
        expected = loop_average_precision(scores, targets, c)
        if expected is None:
            assert np.isnan(ap[c]), f"class {c}"
        else:
            assert ap[c] == pytest.approx(expected, abs=1e-12), f"class {c}"


@pytest.mark.parametrize("k", [1, 3, 12, 20])
def test_top_k_matches_sorted_loop(tied_random_case, k):
    scores, _ = tied_random_case
    expected = loop_top_k(scores, k) & (scores >= 0.5)
    np.testing.assert_array_equal(predict_labels(scores, threshold=0.5, top_k=k), expected)


def test_count_metrics_match_loop(tied_random_case):
    scores, targets = tied_random_case
    result = multilabel_metrics(scores, targets, [f"class{c}" for c in range(scores.shape[1])])
    expected = loop_count_metrics(scores >= 0.5, targets)
    expected_top3 = loop_count_metrics(loop_top_k(scores, 3) & (scores >= 0.5), targets)
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
        assert result["top3"][key] == pytest.approx(expected_top3[key], abs=1e-12), f"top3 {key}"
