"""Screenshots of the console's main pages for the README (docs/console-*.png).

Usage: sagegate console (in another shell), then
    python scripts/console_screenshots.py http://127.0.0.1:8765 --run ATTEMPT --execution NAME \\
        --model NAME/VERSION --endpoint NAME
Drives Debian's Chromium through Playwright, as tests/test_console.py does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--run", required=True)
    parser.add_argument("--execution", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    pages = {
        "overview": "/",
        "run": f"/runs/{args.run}",
        "execution": f"/executions/{args.execution}",
        "model": f"/models/{args.model}",
        "endpoint": f"/endpoints/{args.endpoint}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        for name, path in pages.items():
            page.goto(args.base + path)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=args.out / f"console-{name}.png")
            print(args.out / f"console-{name}.png")
        browser.close()


if __name__ == "__main__":
    main()
