"""Screenshot of a `charlstm inspect` page, as docs/inspect.png shows it: the text coloured by the
best-ranked unit for a feature (default: inside quotes), with the prediction popup open on a
character inside a quotation. Uses Debian's Chromium through Playwright.

    charlstm inspect /tmp/insp_run --split val -o /tmp/inspect.html
    python benchmarks/inspect_screenshot.py /tmp/inspect.html docs/inspect.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--feature", default="inside quotes", help="colour by the best unit for this feature")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no Chromium installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(args.page.resolve().as_uri())
        page.wait_for_selector("#text span")
        row = page.locator("#units tr.unit", has=page.locator("td", has_text=args.feature)).first
        if row.count():
            row.click()
        # a character a few places into the first quotation, so the popup shows mid-quote guesses
        index = page.evaluate("() => { const i = DATA.text.indexOf('\"', 1); return i < 0 ? 10 : i + 4; }")
        target = page.locator(f'#text span[data-i="{index}"]')
        target.scroll_into_view_if_needed()
        target.hover()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    if errors:
        sys.exit(f"the page raised: {errors}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
