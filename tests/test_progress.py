"""Progress bars: off when quiet, and in a kernel a widget that leaves its last line of text when it closes."""

import IPython.display
import pytest
import tqdm.notebook

from workbench import progress as bars


class Handle:
    """What ``display(..., display_id=True)`` returns: the updates it was given."""

    def __init__(self, shown: list, obj):
        self.obj, self.updates = obj, []
        shown.append(self)

    def update(self, obj, raw=False) -> None:
        self.updates.append((obj, raw))


@pytest.fixture
def kernel(monkeypatch):
    """As in a kernel: tqdm.auto's bar is tqdm's notebook bar; what is displayed is collected."""
    shown: list[Handle] = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: Handle(shown, obj))
    monkeypatch.setattr(bars, "tqdm", tqdm.notebook.tqdm_notebook)  # tqdm.notebook is imported above, as tqdm.auto does in a kernel
    for name in ("WORKBENCH_BATCH", "WORKBENCH_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    bars._bar.cache_clear()
    yield shown
    bars._bar.cache_clear()


def test_a_finished_bar_leaves_its_last_line_of_text_instead_of_its_widget(kernel):
    assert list(bars.progress(range(5), "counting")) == [0, 1, 2, 3, 4]
    (handle,) = kernel
    assert handle.obj.children[0].value.startswith("counting:")  # tqdm's widget: its description, bar and counts
    ((text, raw),) = handle.updates
    assert raw is True and set(text) == {"text/plain"}
    assert text["text/plain"].startswith("counting: 100%") and "5/5" in text["text/plain"]


def test_a_bar_stopped_early_leaves_where_it_stopped(kernel):
    with pytest.raises(KeyboardInterrupt):
        for step in bars.progress(range(5), "counting"):
            if step == 2:
                raise KeyboardInterrupt
    ((text, _),) = kernel[0].updates
    assert text["text/plain"].startswith("counting:  40%") and "2/5" in text["text/plain"]


def test_a_quiet_or_disabled_bar_shows_nothing(kernel, monkeypatch):
    assert list(bars.progress(range(3), "off", enabled=False)) == [0, 1, 2]
    monkeypatch.setenv("WORKBENCH_PROGRESS", "0")
    assert list(bars.progress(range(3), "quiet")) == [0, 1, 2]
    assert kernel == []


def test_a_bar_over_bytes_counts_each_item_once_its_work_is_done(kernel):
    seen = []
    for item in bars.progress_bytes(["small", "large"], [1024, 3 * 1024], "merge"):
        (handle,) = kernel
        seen.append(item)
    ((text, _),) = handle.updates
    assert seen == ["small", "large"] and "merge: 100%" in text["text/plain"] and "4.00k/4.00k" in text["text/plain"]


def test_a_bar_over_bytes_stopped_early_shows_the_bytes_done(kernel):
    for item in bars.progress_bytes(["a", "b", "c"], [1024, 1024, 2048], "merge"):
        if item == "b":
            break
    ((text, _),) = kernel[0].updates
    assert "25%" in text["text/plain"] and "1.00k/4.00k" in text["text/plain"]


def test_a_bar_over_bytes_needs_a_size_for_every_item():
    with pytest.raises(ValueError, match="2 sizes for 3 items"):
        list(bars.progress_bytes([1, 2, 3], [1, 2], "merge"))
