"""The benchmarks that must run where there is no GPU: their code paths, on tiny shapes."""

import pytest

from shardtune.cli import main


@pytest.mark.slow
def test_bench_gpu_dry_run_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--dry-run", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    table = out.read_text()
    runs = ["this loop", "seed", "this loop, --compile", "this loop, --grad-checkpointing"]  # on a GPU also
    # each under a 12 and a 6 GB cap, and fp16 + scaler: on the CPU a cap is a no-op and fp16 is fp32
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table.splitlines()
            if line.startswith("| ") and " | " in line}
    assert all(run in rows for run in runs), table
    for run in runs:
        tokens_per_s, padding, peak = rows[run][0], rows[run][1], rows[run][2]
        assert float(tokens_per_s.replace(",", "")) > 0 and padding.endswith("%") and float(peak.replace(",", "")) > 0
    assert float(rows["this loop"][4].replace(",", "")) > 0  # the step-time model's prediction
    assert "shardtune generate, batch 8" in table and "This loop / seed" in table


def test_bench_gpu_refuses_to_run_without_a_gpu_unless_dry(capsys):
    assert main(["bench", "gpu", "--workdir", "unused"]) == 2
    assert "needs an NVIDIA GPU; --dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_planner_dry_run_trains_each_planned_configuration(tmp_path, capsys):
    out = tmp_path / "planner.md"
    assert main(["bench", "planner", "--dry-run", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert [row[1] for row in rows] == ["lora"]
    for row in rows:  # the planner's estimate and the probe's own peak and step time, both real numbers
        estimate, peak, step_ms = (float(row[i].replace(",", "")) for i in (4, 5, 8))
        assert estimate > 0 and peak > 0 and step_ms > 0
    assert "No GPU peak measured" in out.read_text()
