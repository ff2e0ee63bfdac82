import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcls_audio.aggregate import (
    find_results,
    load_groups,
    main,
    mean_std,
    render_markdown,
    summarize,
)


def write_run(
    root: Path,
    name: str,
    model: str,
    conv: str,
    seed: int,
    num_classes: int = 527,
    optim: str = "adamw",
    **metrics,
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    res = {
        "seed": seed,
        "config": {
            "seed": seed,
            "model": {"name": model},
            "conv": {"name": conv},
            "optim": {"name": optim},
            "data": {"num_classes": num_classes},
        },
        "per_class_ap": [0.5, None],
        "commit": "abc",
        "wall_time_s": 1.0,
        **metrics,
    }
    (d / "results.json").write_text(json.dumps(res))
    return d


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    # three seeds: mAP 45, 46, 44 % -> 45.00 ± 1.00 (ddof=1); d' 2, 2.5, 3 -> 2.500 ± 0.500
    for seed, (m, d) in enumerate([(0.45, 2.0), (0.46, 2.5), (0.44, 3.0)]):
        write_run(
            root,
            f"2024-01-01/{seed}",
            "convnext_t",
            "dcls_gauss",
            seed,
            map=m,
            mauc=0.97,
            dprime=d,
            params=28_200_000,
            train_samples_per_s=100.0 + 10 * seed,
        )
    write_run(
        root,
        "dsc/0",
        "convnext_t",
        "dsc",
        0,
        map=0.4483,
        mauc=0.96,
        dprime=2.4,
        params=28_000_000,
        train_samples_per_s=120.0,
    )
    write_run(
        root,
        "atto/0",
        "convnext_atto",
        "dsc",
        0,
        map=0.1,
        mauc=0.8,
        dprime=1.2,
        params=3_500_000,
        train_samples_per_s=900.0,
        map_ema=0.12,
    )
    (root / "2024-01-01" / "multirun.yaml").write_text("not a result\n")
    return root


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 1.2909944487358056))
    assert mean_std([7.0]) == (7.0, None)


def test_table_values_and_order(runs: Path, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert "mAP (%)" in header and "d′" in header and "mAP EMA (%)" in header
    # paper order: ConvNeXt-T DSC before DCLS; groups outside the paper come last
    assert rows[0].startswith("| ConvNeXt-T | DSC 7×7 |")
    assert rows[1].startswith("| ConvNeXt-T | DCLS-Gauss 23²/26 |")
    assert rows[2].startswith("| convnext_atto |")
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    col = {h.strip(): c for h, c in zip(header.strip("|").split("|"), cells, strict=True)}
    assert col["runs (seeds)"] == "3 (0,1,2)"
    assert col["classes"] == "527" and col["optim"] == "adamw"
    assert col["mAP (%)"] == "45.00 ± 1.00"
    assert col["mAUC (%)"] == "97.00 ± 0.00"
    assert col["d′"] == "2.500 ± 0.500"
    assert col["params (M)"] == "28.20 ± 0.00"
    assert col["train samples/s"] == "110.0 ± 10.0"
    assert col["paper mAP (%)"] == "45.52 ± 0.05"
    assert col["paper params (M)"] == "28.6M"
    assert col["paper samples/s (V100 inference)"] == "509.4"
    dsc = [c.strip() for c in rows[0].strip("|").split("|")]
    assert "44.83" in dsc  # a single run: value alone, no ± part
    assert "sample standard deviation (ddof=1)" in out


def test_summary_json_and_out_file(runs: Path, tmp_path: Path):
    out, js = tmp_path / "t" / "table1.md", tmp_path / "summary.json"
    assert main([str(runs), "--out", str(out), "--json", str(js)]) == 0
    assert "| ConvNeXt-T |" in out.read_text()
    rows = json.loads(js.read_text())
    row = next(r for r in rows if (r["model"], r["conv"]) == ("convnext_t", "dcls_gauss"))
    assert row["n"] == 3 and row["map"]["mean"] == pytest.approx(0.45)
    assert row["map"]["std"] == pytest.approx(0.01)
    assert row["paper"]["map"] == 45.52
    single = next(r for r in rows if r["conv"] == "dsc" and r["model"] == "convnext_t")
    assert single["map"]["std"] is None


def test_duplicate_seed_warns(runs: Path):
    write_run(runs, "again/0", "convnext_t", "dcls_gauss", 1, map=0.5)
    with pytest.warns(UserWarning, match="seed 1 appears 2 times"):
        groups = load_groups(find_results([runs]))
    (group,) = [g for g in groups.values() if (g.model, g.conv) == ("convnext_t", "dcls_gauss")]
    assert len(group.paths) == 4
    assert summarize(groups)[1]["map"]["n"] == 4


def test_nan_metric_written_as_null(tmp_path: Path):
    write_run(tmp_path, "r", "convnext_t", "dsc", 0, map=None, mauc=0.5, dprime=0.0)
    rows = summarize(load_groups(find_results([tmp_path])))
    assert rows[0]["map"]["mean"] != rows[0]["map"]["mean"]  # NaN


def test_errors(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no results.json found" in capsys.readouterr().err
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{truncated")
    assert main([str(bad)]) == 2
    assert "cannot read results file" in capsys.readouterr().err
    (bad / "results.json").write_text(json.dumps({"map": 0.1, "config": {"model": {}}}))
    assert main([str(bad)]) == 2
    assert "config.model.name" in capsys.readouterr().err


def test_script_runs(runs: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "dcls_audio.aggregate", str(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| ConvNeXt-T | DCLS-Gauss 23²/26 |" in proc.stdout


def test_runs_that_differ_in_one_key_are_separate_rows_naming_it(tmp_path: Path):
    write_run(tmp_path, "a", "convnext_t", "dsc", 0, num_classes=16, map=0.3)
    write_run(tmp_path, "b", "convnext_t", "dsc", 1, num_classes=527, optim="lamb", map=0.4)
    groups = load_groups(find_results([tmp_path]))
    rows = summarize(groups)
    assert len(rows) == 2 and [r["n"] for r in rows] == [1, 1]
    assert {tuple(sorted(r["differs"])) for r in rows} == {("data.num_classes", "optim.name")}
    assert next(r for r in rows if r["num_classes"] == [16])["paper"] is None
    table = render_markdown(groups).splitlines()
    row16 = next(line for line in table if "data.num_classes=16" in line)
    assert "optim.name=adamw" in row16 and row16.endswith("| – | – | – |")
    assert "settings" in table[0]


def test_kernel_size_and_lr_sweeps_are_never_averaged(tmp_path: Path):
    """Found on a real sweep: 11 vs 23 dilated kernels and lr 1e-3 vs 0.5 made one row."""
    for i, (size, lr) in enumerate([(11, 1e-3), (23, 0.5), (11, 1e-3)]):
        d = write_run(tmp_path, f"r{i}", "convnext_t", "dcls_gauss", i, map=0.4 + 0.01 * i)
        res = json.loads((d / "results.json").read_text())
        res["config"]["conv"] = {"name": "dcls_gauss", "type": "dcls", "version": "gauss",
                                 "dilated_kernel_size": size, "kernel_count": 26}  # fmt: skip
        res["config"]["optim"]["lr"] = lr
        res["config"]["data"]["root"] = f"/data/copy{i}"  # paths never split a group
        (d / "results.json").write_text(json.dumps(res))
    rows = {r["conv_label"]: r for r in summarize(load_groups(find_results([tmp_path])))}
    assert set(rows) == {"DCLS-Gauss 11²/26", "DCLS-Gauss 23²/26"}
    assert rows["DCLS-Gauss 11²/26"]["n"] == 2 and rows["DCLS-Gauss 23²/26"]["n"] == 1
    assert rows["DCLS-Gauss 11²/26"]["differs"] == {
        "conv.dilated_kernel_size": 11,
        "optim.lr": 1e-3,
    }
    assert rows["DCLS-Gauss 11²/26"]["paper"] is None
    assert rows["DCLS-Gauss 23²/26"]["paper"]["map"] == 45.52


def table_columns(out: str) -> list[dict[str, str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip() for c in row.strip("|").split("|")), strict=True))
        for row in lines[1:]
    ]


def test_event_metrics_beside_map(runs: Path, capsys):
    # three seeds of a strong-label run: segment F1 50, 52, 54 % -> 52.00 ± 2.00
    for seed, (f1, ap) in enumerate([(0.50, 0.30), (0.52, 0.33), (0.54, 0.36)]):
        write_run(runs, f"strong/{seed}", "convnext_atto", "dcls_gauss", seed, map=0.2,
                  segment_f1=f1, segment_ap=ap, psds1=0.1 * (seed + 1), segment_s=1.0,
                  segment_threshold=0.5, event_clips=40)  # fmt: skip
    assert main([str(runs), "--json", str(runs / "summary.json")]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert head.index("mAP (%)") < head.index("segment F1 (%)") < head.index("segment AP (%)")
    assert head.index("segment AP (%)") < head.index("PSDS1") < head.index("mAUC (%)")
    rows = {(r["model"], r["conv"]): r for r in table_columns(out)}
    strong = rows[("convnext_atto", "DCLS-Gauss 23²/26")]
    assert strong["segment F1 (%)"] == "52.00 ± 2.00"
    assert strong["segment AP (%)"] == "33.00 ± 3.00"
    assert strong["PSDS1"] == "0.200 ± 0.100"
    assert strong["mAP (%)"] == "20.00 ± 0.00"
    weak = rows[("ConvNeXt-T", "DCLS-Gauss 23²/26")]
    assert weak["segment F1 (%)"] == weak["segment AP (%)"] == weak["PSDS1"] == "–"
    assert "1.0-s segments, threshold 0.5" in out
    summary = json.loads((runs / "summary.json").read_text())
    row = next(r for r in summary if r["model"] == "convnext_atto" and r["conv"] == "dcls_gauss")
    assert row["segment_f1"]["mean"] == pytest.approx(0.52) and row["segment_f1"]["n"] == 3
    assert row["segment_ap"]["std"] == pytest.approx(0.03)
    assert row["event_settings"] == [{"segment_s": 1.0, "threshold": 0.5}]
    assert "segment_f1" not in next(r for r in summary if r["conv"] == "dsc")


def test_runs_without_event_metrics_keep_their_table(runs: Path, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert "segment" not in out and "PSDS1" not in out
    head = [h.strip() for h in out.splitlines()[0].strip("|").split("|")]
    assert head[4:7] == ["runs (seeds)", "mAP (%)", "mAUC (%)"]
    # a strong-label run with no strongly labelled evaluation clip has event_clips only
    write_run(runs, "nostrong/0", "convnext_atto", "dsc", 1, map=0.1, event_clips=0)
    assert main([str(runs)]) == 0
    assert "segment" not in capsys.readouterr().out
