"""Console line and JSONL metrics file in the original tool's formats; MultiTracker; the terminal-only progress bar."""
import io
import json
import re
from datetime import datetime
from pathlib import Path

from fluxflow.train import tracking
from fluxflow.checkpoints.ref import CheckpointRef, StepResult
from fluxflow.train.tracking import (
    ConsoleJsonlTracker,
    MultiTracker,
    Progress,
    Tracker,
    console_line,
)
from fluxflow.progress_bar import batch_progress

PROGRESS = Progress(step_name="vae_gan", step_index=2, n_steps=4, epoch=5, n_epochs=20, batch=127, n_batches=500,
                    global_step=2847, sec_per_batch=3.2)
SEED_METRICS = {"vae_loss": 0.0234, "kl_loss": 12.45, "g_loss": 0.156, "d_loss": 0.089, "lpips_loss": 0.0812}


def test_console_line_matches_the_seed_example_exactly():
    line = console_line(SEED_METRICS, PROGRESS, now=datetime(2025, 12, 9, 0, 15, 23))
    assert line == ("[00:15:23] Step vae_gan (2/4) | Epoch 5/20 | Batch 127/500 | VAE: 0.0234 | KL: 12.45 | "
                    "G: 0.156 | D: 0.089 | LPIPS: 0.0812 | 3.2s/batch")


def test_console_line_shows_only_labelled_metrics_in_seed_order_with_four_significant_digits():
    metrics = {"flow_loss": 0.123456, "skipped_updates": 0.0, "kl_loss": 1234.5678, "vae_loss": 0.000123456}
    line = console_line(metrics, PROGRESS, now=datetime(2025, 1, 1, 9, 5, 7))
    assert line.endswith("| VAE: 0.0001235 | KL: 1235 | Flow: 0.1235 | 3.2s/batch")
    assert "skipped" not in line and "G:" not in line and "LPIPS" not in line


def test_console_line_of_gan_only_mode_shows_the_zero_vae_loss_as_the_seed_does():
    """The seed's table of metrics by mode: GAN-only (train_vae: false) shows `VAE (0.0)`; `.4g` alone printed
    `VAE: 0`. Other values keep their 4 significant digits."""
    gan_only = {"vae_loss": 0.0, "kl_loss": 0.335, "g_loss": -0.078, "d_loss": 2.0}
    line = console_line(gan_only, PROGRESS, now=datetime(2025, 1, 1, 9, 5, 7))
    assert line.endswith("| VAE: 0.0 | KL: 0.335 | G: -0.078 | D: 2 | 3.2s/batch")


def test_jsonl_metrics_come_in_the_seed_order_then_the_others():
    """The seed's JSONL format lists vae_loss, kl_loss, g_loss, d_loss, lpips_loss; a step's log-interval means
    arrive sorted by name (d_logit_fake, d_loss, g_loss, ..., vae_loss), which is the order lines were written in."""
    means = dict(sorted({**SEED_METRICS, "flow_loss": 0.5, "d_logit_fake": -0.2, "grad_norm_vae": 4.9,
                         "skipped_updates": 0.0}.items()))
    record = tracking.jsonl_record({**means, "lr_vae": 1e-4}, PROGRESS, "20251209_173000")
    assert list(record["metrics"]) == ["vae_loss", "kl_loss", "g_loss", "d_loss", "lpips_loss", "flow_loss",
                                       "d_logit_fake", "grad_norm_vae", "skipped_updates", "lr_vae"]
    assert record["metrics"] == {**means, "lr_vae": 1e-4}


def test_console_line_says_when_updates_were_skipped():
    """A run whose every update is skipped (lr far too high: non-finite losses) showed plausible losses and nothing
    else on the console; the count was only in the JSONL."""
    line = console_line({"vae_loss": 1.5, "skipped_updates": 3.0, "skipped_samples": 2.0}, PROGRESS)
    assert line.endswith("| VAE: 1.5 | 3.2s/batch | skipped updates: 3 | skipped samples: 2")


def test_console_line_shows_sub_second_batches_readably():
    fast = Progress("flow", 3, 3, 1, 1, 10, 10, 30, sec_per_batch=0.0412)
    assert console_line({"flow_loss": 0.5}, fast).endswith("| Flow: 0.5 | 0.041s/batch")


def test_tracker_appends_seed_jsonl_and_prints_console_line(tmp_path):
    out = io.StringIO()
    tracker = ConsoleJsonlTracker(tmp_path, session_id="20251209_173000", stream=out)
    assert isinstance(tracker, Tracker)
    tracker.log_metrics({**SEED_METRICS, "skipped_updates": 0.0}, PROGRESS)
    tracker.log_metrics({"vae_loss": float("nan")}, PROGRESS)

    lines = (tmp_path / "graph" / "training_metrics_vae_gan.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first) == ["timestamp", "session_id", "epoch", "batch", "global_step", "metrics"]
    assert first["session_id"] == "20251209_173000"
    assert (first["epoch"], first["batch"], first["global_step"]) == (5, 127, 2847)
    assert first["metrics"] == {**SEED_METRICS, "skipped_updates": 0.0}  # every metric, not only the console ones
    datetime.fromisoformat(first["timestamp"])
    assert json.loads(lines[1])["metrics"] == {"vae_loss": None}  # strict JSON: a NaN loss is null, not NaN

    console = out.getvalue().splitlines()
    assert len(console) == 2
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] Step vae_gan \(2/4\) \| .* \| LPIPS: 0\.0812 \| 3\.2s/batch", console[0])
    assert "VAE: nan" in console[1]


def test_resumed_step_continues_the_same_jsonl_file(tmp_path):
    ConsoleJsonlTracker(tmp_path, stream=io.StringIO()).log_metrics({"vae_loss": 1.0}, PROGRESS)
    resumed = ConsoleJsonlTracker(tmp_path, session_id="20260101_000000", stream=io.StringIO())
    resumed.log_metrics({"vae_loss": 0.5}, PROGRESS)
    records = [json.loads(x) for x in (tmp_path / "graph" / "training_metrics_vae_gan.jsonl").open()]
    assert [r["metrics"]["vae_loss"] for r in records] == [1.0, 0.5]
    assert records[1]["session_id"] == "20260101_000000"
    assert re.fullmatch(r"\d{8}_\d{6}", records[0]["session_id"])


def test_default_session_id_has_the_seed_format(tmp_path):
    assert re.fullmatch(r"\d{8}_\d{6}", ConsoleJsonlTracker(tmp_path).session_id)


class Recorder:
    def __init__(self):
        self.calls = []

    def step_started(self, step, step_key, n_steps, resumed):
        self.calls.append(("started", step, step_key, n_steps, resumed))

    def log_metrics(self, metrics, progress):
        self.calls.append(("metrics", metrics, progress))

    def log_image(self, path):
        self.calls.append(("image", path))

    def log_artifact(self, path):
        self.calls.append(("artifact", path))

    def step_finished(self, ref, result):
        self.calls.append(("finished", ref, result))

    def warn(self, key, message):
        self.calls.append(("warning", key, message))


def test_multi_tracker_fans_out_every_call_in_order():
    a, b = Recorder(), Recorder()
    multi = MultiTracker([a, b])
    ref = CheckpointRef("/x/final.pt", "0" * 64, "vae", "k", 10, 1)
    result = StepResult("vae", "epochs_done", 1)
    multi.step_started("step", "k", 2, False)
    multi.log_metrics({"vae_loss": 1.0}, PROGRESS)
    multi.log_image(Path("a.webp"))
    multi.log_artifact(Path("m.jsonl"))
    multi.warn("flat_discriminator", "D is flat")
    multi.step_finished(ref, result)
    assert a.calls == b.calls
    assert [c[0] for c in a.calls] == ["started", "metrics", "image", "artifact", "warning", "finished"]
    assert a.calls[5] == ("finished", ref, result)


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(tracking.sys, "stdout", io.StringIO())
    bar = batch_progress(10, 3, "vae epoch 1")
    bar.update(1)
    bar.close()
    assert tracking.sys.stdout.getvalue() == ""

    tty = FakeTty()
    monkeypatch.setattr(tracking.sys, "stdout", tty)
    bar = batch_progress(10, 3, "vae epoch 1")
    bar.update(2)
    assert bar.n == 5  # counts from the resumed batch
    bar.close()
    assert "vae epoch 1" in tty.getvalue() and "3/10" in tty.getvalue()


def test_architecture_doc_lists_the_tracker_protocols_methods():
    """docs/ARCHITECTURE.md's Tracker block is the interface flows/ implements: every method the runner calls."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    block = doc.split("class Tracker(Protocol):", 1)[1].split("```", 1)[0]
    methods = {name for name in vars(Tracker) if not name.startswith("_")}
    assert set(re.findall(r"def (\w+)\(", block)) == methods


def test_a_runner_line_reaches_the_trackers_that_take_it_and_skips_one_written_before_say(capsys):
    """run_step(tracker=...) is public: a tracker written against the protocol before `say` failed every step at
    its "Starting step" line."""
    from fluxflow.train.tracking import runner_line

    class Listens(Tracker):
        def __init__(self):
            self.lines = []

        def say(self, line):
            self.lines.append(line)

    class Older:  # the six methods of before, no `say`
        def log_metrics(self, metrics, progress):
            pass

    listens = Listens()
    runner_line(MultiTracker([Older(), listens]), "Starting step: warm, epoch 1, batch 0")
    runner_line(Older(), "Finished step warm")
    runner_line(None, "Skipping steps: warm")
    assert listens.lines == ["Starting step: warm, epoch 1, batch 0"]
    assert capsys.readouterr().out.splitlines() == ["Starting step: warm, epoch 1, batch 0", "Finished step warm",
                                                    "Skipping steps: warm"]


def test_lines_of_branches_training_in_threads_come_out_whole(tmp_path, monkeypatch):
    """A line is written in two writes (text, newline); a terminal or pipe lets another thread run between them, and
    lines of two branches came out joined ("...final.pt[11:27:03] Finished step a-seed0: ...", then an empty line)."""
    import sys
    import threading
    import time

    class SlowStream(io.StringIO):
        def write(self, text):
            time.sleep(0.0005)  # lets another thread run, as a write to a pipe does
            return super().write(text)

    stream = SlowStream()
    monkeypatch.setattr(sys, "stdout", stream)
    tracker = ConsoleJsonlTracker(tmp_path, stream=stream)

    def speak(branch):
        for i in range(10):
            tracking.runner_line(object(), f"runner {branch} {i}")  # the runner's lines: print()ed
            tracker.warn("key", f"warning {branch} {i}")  # the tracker's: tqdm.write()

    threads = [threading.Thread(target=speak, args=(branch,)) for branch in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(stream.getvalue().splitlines()) == sorted(
        [f"runner {b} {i}" for b in range(4) for i in range(10)] + [f"⚠️  warning {b} {i}" for b in range(4)
                                                                    for i in range(10)])


def test_trimming_for_a_resume_drops_a_line_a_kill_cut_short(tmp_path):
    """A kill (or a full disk) in the middle of an append leaves a last line that is not JSON; the resume's trim
    drops it with the lines past the checkpoint. It raised JSONDecodeError, so the step could never resume again."""
    path = tmp_path / "training_metrics_s.jsonl"
    kept = [{"global_step": 1, "metrics": {"vae_loss": 0.5}}, {"global_step": 2, "metrics": {"vae_loss": 0.4}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept) + json.dumps(kept[0])[:20] + "\n[3]\n")
    tracking.trim_jsonl(path, max_global_step=2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == kept
