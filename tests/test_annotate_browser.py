"""The Annotate page in a real browser (`iad up` + Debian's chromium): draw a rectangle and a brush stroke with the
mouse, undo a third stroke, save; the stored mask PNG is the drawn area (up to the strokes' anti-aliased edge);
a second save makes version 2 and the history shows both. Screenshots go to tmp_path (and $IAD_SCREENSHOTS)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from test_browser import CHROMIUM, CHROMIUM_ARGS, Screenshots, app_url, settled  # noqa: F401  (app_url: the `iad up` fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BRUSH = 16  # canvas px (the page's default brush size)


def _pixels(page) -> int:  # noqa: ANN001
    text = page.get_by_text(re.compile(r"\d+ mask pixels of")).inner_text()
    return int(text.split()[0])


def _expected(canvas: tuple[int, int], size: tuple[int, int], rect: tuple[float, float, float, float],
              stroke: tuple[float, float, float, float]) -> np.ndarray:
    """The drawn area on the image's pixels: rasterised at canvas resolution, then at least half of each image
    pixel covered (what the page's mask composition does with fully opaque coverage)."""
    big = Image.new("L", canvas, 0)
    draw = ImageDraw.Draw(big)
    draw.rectangle(rect, fill=255)
    x0, y0, x1, y1 = stroke
    draw.line((x0, y0, x1, y1), fill=255, width=BRUSH)
    r = BRUSH / 2
    for x, y in ((x0, y0), (x1, y1)):  # round caps
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    area = np.asarray(Image.fromarray(np.asarray(big, np.float32) / 255, mode="F").resize(size, Image.BOX))
    return area >= 0.5


def drag(page, box: dict, line: tuple[float, float, float, float], steps: int) -> None:  # noqa: ANN001
    """Press at (x0, y0) of the canvas, move to (x1, y1) in `steps` mouse events, release (canvas px)."""
    x0, y0, x1, y1 = line
    page.mouse.move(box["x"] + x0, box["y"] + y0)
    page.mouse.down()
    page.mouse.move(box["x"] + x1, box["y"] + y1, steps=steps)
    page.mouse.up()


def test_draw_undo_save_and_version_two(app_url, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    url, env, log_path = app_url
    for key in ("IAD_HOME", "IAD_DATABASE_URL", "IAD_ARTIFACTS", "IAD_DEMO_SIZE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("IAD_USER", raising=False)
    from dashboard import state
    from db import annotations as dba
    from db import artifacts

    root = str(state.ensure_demo_dataset())
    shot = Screenshots(tmp_path)

    def choose_tool(page, name: str) -> None:  # noqa: ANN001
        """Pick a drawing tool and wait until the rerun it causes has reached the page (the brush slider is
        disabled for shapes) and the canvas has taken its new mode: a drag during the canvas's re-render is
        lost."""
        page.get_by_text(name, exact=True).click()
        slider = page.locator("[data-testid='stSlider']").filter(has_text="Brush size").get_by_role("slider")
        (expect(slider).to_be_disabled if name in ("Rectangle", "Polygon") else expect(slider).to_be_enabled)()
        settled(page)
        page.wait_for_timeout(750)

    def wait_pixels(page, check, what: str) -> int:  # noqa: ANN001
        for _ in range(120):
            settled(page)
            n = _pixels(page)
            if check(n):
                return n
            page.wait_for_timeout(500)
        raise AssertionError(f"mask pixel count never {what} (last {n})")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(f"{url}/annotate")
        canvas = page.locator("canvas.dc-canvas").first
        expect(canvas).to_be_visible()
        settled(page)
        rel = sorted(dba.dataset_images("demo", root, ["brick"]))[0]  # the queue's first image
        assert rel.startswith("brick/test/good/"), rel
        full = Path(root) / rel
        size = Image.open(full).size
        box = canvas.bounding_box()
        cw, ch = round(box["width"]), round(box["height"])
        assert cw == 512, box
        assert wait_pixels(page, lambda n: n == 0 or n > 0, "read") is not None
        start = _pixels(page)
        assert start == 0, "the first image of the demo queue is a good image without mask"

        page.locator("[data-testid='stRadio']").filter(has_text="Image label").get_by_text("defect", exact=True).click()
        expect(page.locator("[data-testid='stSelectbox']").filter(has_text="Defect type")).to_be_visible()
        settled(page)
        # Rectangle: drag with the mouse.
        choose_tool(page, "Rectangle")
        rect = (100, 90, 190, 170)
        drag(page, box, rect, steps=10)
        after_rect = wait_pixels(page, lambda n: n > 0, "above 0 after the rectangle")
        # Brush stroke.
        choose_tool(page, "Brush")
        stroke = (260, 300, 420, 330)
        drag(page, box, stroke, steps=20)
        after_stroke = wait_pixels(page, lambda n: n > after_rect, "larger after the stroke")
        # A third stroke, undone before saving: it must leave no trace.
        extra = (60, 430, 200, 450)
        drag(page, box, extra, steps=15)
        wait_pixels(page, lambda n: n > after_stroke, "larger after the extra stroke")
        page.mouse.move(box["x"] + cw / 2, box["y"] + ch / 2)  # the toolbar shows while the pointer is on the canvas
        page.get_by_role("button", name="Undo").click()
        wait_pixels(page, lambda n: n == after_stroke, "back after undo")
        shot(page, "annotate-01-drawn.png")

        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text(f"Saved version 1 of {rel} (current).")).to_be_visible()
        settled(page)
        rows = dba.history("demo", root, rel)
        assert [r.version for r in rows] == [1]
        assert (rows[0].label, rows[0].source, rows[0].replaces_id) == (1, "drawn", None)
        stored = np.asarray(Image.open(artifacts.artifacts_root() / rows[0].mask_path)) > 127
        assert stored.shape == (size[1], size[0])
        expected = _expected((cw, ch), size, rect, stroke)
        # Equal up to the anti-aliased edge: every difference lies within one image pixel of the drawn outline.
        edge = ndimage.binary_dilation(expected) & ~ndimage.binary_erosion(expected)
        differ = stored ^ expected
        assert not (differ & ~edge).any(), f"{int((differ & ~edge).sum())} pixels differ away from the outline"
        assert differ.sum() <= 0.25 * edge.sum(), (int(differ.sum()), int(edge.sum()))
        # The undone stroke's area stays empty.
        sx, sy = cw / size[0], ch / size[1]
        assert not stored[int(extra[1] / sy) - 1:int(extra[3] / sy) + 2, int(extra[0] / sx):int(extra[2] / sx)].any()
        shot(page, "annotate-02-saved.png")

        # Version 2: another rectangle, saved with the keyboard shortcut.
        choose_tool(page, "Rectangle")
        before = _pixels(page)
        drag(page, box, (300, 60, 360, 120), steps=8)
        wait_pixels(page, lambda n: n > before, "larger after the second rectangle")
        page.keyboard.press("Alt+s")
        expect(page.get_by_text(f"Saved version 2 of {rel} (current).")).to_be_visible()
        settled(page)
        rows = dba.history("demo", root, rel)
        assert [r.version for r in rows] == [1, 2] and rows[1].replaces_id == rows[0].id
        table = page.locator("[data-testid='stTable']").last
        expect(table.get_by_text("v2 (current)")).to_be_visible()
        expect(table.locator("tbody th").get_by_text("v1", exact=True)).to_be_visible()  # v2 "replaced" v1 too
        v2 = np.asarray(Image.open(artifacts.artifacts_root() / rows[1].mask_path)) > 127
        assert (v2 & stored).sum() == stored.sum() and v2.sum() > stored.sum()  # v1's mask plus the new box
        shot(page, "annotate-03-version-2.png")
        browser.close()
