"""logs.progress: a bar on a terminal, log lines (rate-limited, and one at the end) when stderr is a file."""

import io
import logging

from tooln1_jax import logs


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tooln1_jax.progress"]


def test_progress_to_a_file_logs_at_most_every_interval_and_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    with logs.LoggedProgress(total=10, desc="generate", unit="prompt", interval_s=3600) as bar:
        for _ in range(5):
            bar.update(2)
    lines = _messages(caplog)
    assert len(lines) == 1 and lines[0].startswith("generate: 10/10 prompts,")


def test_progress_with_no_interval_logs_every_update_with_counts(caplog):
    caplog.set_level(logging.INFO)
    bar = logs.LoggedProgress(total=6, desc="tokenize", unit="prompt", interval_s=0)
    for _ in range(3):
        bar.update(2)
    assert [line.split(",")[0] for line in _messages(caplog)] == [
        "tokenize: 2/6 prompts", "tokenize: 4/6 prompts", "tokenize: 6/6 prompts"]
    assert "s left" in _messages(caplog)[0]


def test_progress_picks_log_lines_for_a_non_terminal_stream():
    import ipykernel  # noqa: F401  (a notebook runner in the same process imports it; that is not a notebook)

    assert isinstance(logs.progress(3, "generate", "prompt", file=io.StringIO()), logs.LoggedProgress)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = logs.progress(3, "generate", "prompt", file=Terminal())
    assert not isinstance(bar, logs.LoggedProgress)
    bar.update(3)
    bar.close()


def test_progress_in_a_notebook_kernel_is_a_bar(monkeypatch):
    import IPython

    class KernelShell:
        kernel = object()

    monkeypatch.setattr(IPython, "get_ipython", lambda: KernelShell())
    bar = logs.progress(3, "generate", "prompt", file=io.StringIO())
    assert not isinstance(bar, logs.LoggedProgress)
    bar.close()


def test_progress_resumed_count_shows_postfix_and_estimates_from_the_units_done_since(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    clock = iter([100.0, 110.0])  # made at t=100, one step done at t=110
    monkeypatch.setattr(logs.time, "monotonic", lambda: next(clock))
    bar = logs.LoggedProgress(total=10, desc="grpo", unit="step", interval_s=0, initial=6)
    bar.set_postfix({"loss": "0.123"})
    bar.update(1)
    # 7 of 10 after one step in 10 s: 3 steps left at 10 s each
    assert _messages(caplog) == ["grpo: 7/10 steps, 10 s elapsed, ~30 s left (loss 0.123)"]


def test_progress_disabled_writes_nothing(caplog):
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    bar = logs.progress(3, "warm start (sft)", "step", file=stream, disable=True)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == "" and _messages(caplog) == []
