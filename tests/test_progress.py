"""``codesign.progress.TrainingProgress``: supernet training progress on stderr, a tqdm bar on a
terminal and plain periodic lines otherwise; and the built-in evaluators of a search get it."""
import io

from codesign.progress import TrainingProgress
from codesign.search_spaces.mbconv_supernet import TrainProgress


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _train(render, steps, *, first=1, seconds_per_step=1.0, clock=None, loss=2.0):
    for step in range(first, steps + 1):
        if clock is not None:
            clock.now += seconds_per_step
        render(TrainProgress(step, steps, 0, loss, (step - first + 1) * seconds_per_step))


def test_plain_lines_every_tenth_with_rate_and_eta():
    stream = io.StringIO()
    render = TrainingProgress("LM supernet training", stream=stream, clock=Clock())
    _train(render, 100, seconds_per_step=0.5)
    lines = stream.getvalue().splitlines()
    assert [line.split("step ")[1].split(" ")[0] for line in lines] == \
        ["1/100"] + [f"{k}/100" for k in range(10, 101, 10)]
    assert lines[4] == ("LM supernet training: step 40/100 (40%), loss 2.000, 2.00 step/s, "
                        "20s elapsed, ETA 30s")


def test_plain_lines_at_least_every_30_seconds():
    stream, clock = io.StringIO(), Clock()
    render = TrainingProgress(stream=stream, clock=clock)
    _train(render, 1000, seconds_per_step=11.0, clock=clock)  # a tenth takes 1100 s
    steps = [int(line.split("step ")[1].split("/")[0]) for line in stream.getvalue().splitlines()]
    assert steps[:5] == [1, 4, 7, 10, 13]  # every third step: 33 s >= 30 s apart
    assert steps[-1] == 1000


def test_a_resumed_training_counts_its_rate_from_where_it_resumed():
    stream = io.StringIO()
    render = TrainingProgress(stream=stream, clock=Clock())
    render(TrainProgress(0, 0, 0, float("nan"), 0.0, "resumed at step 60/100 from x.ckpt.pt"))
    _train(render, 100, first=61, seconds_per_step=2.0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "supernet training: resumed at step 60/100 from x.ckpt.pt"
    assert lines[1].startswith("supernet training: step 61/100 (61%)")
    assert "0.50 step/s" in lines[-1] and "100/100" in lines[-1]


def test_a_terminal_gets_a_bar_with_loss_and_eta():
    stream = Terminal()
    render = TrainingProgress("MBConv supernet training", stream=stream, clock=Clock())
    _train(render, 5, loss=1.234)
    render(TrainProgress(0, 0, 0, float("nan"), 0.0, "cached /c/supernets/x.pt"))
    text = stream.getvalue()
    assert "MBConv supernet training:" in text and "5/5" in text and "loss 1.234" in text
    assert "step/s" in text or "s/step" in text
    assert ": step " not in text  # no plain lines on a terminal
    assert text.rstrip().endswith("MBConv supernet training: cached /c/supernets/x.pt")
    assert render._tqdm is None  # closed when the training ended


def test_no_bar_asked_writes_plain_lines_even_on_a_terminal():
    stream = Terminal()
    render = TrainingProgress(bar=False, stream=stream, clock=Clock())
    _train(render, 10)
    assert stream.getvalue().count(": step ") == 10


def test_a_search_gives_the_mbconv_supernet_the_renderer():
    from codesign.context import build_context
    from codesign.search import SearchConfig

    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms", progress=True)
    progress = build_context(config).evaluator.progress
    assert isinstance(progress, TrainingProgress) and progress.bar is True
    assert progress.label == "MBConv supernet training"
