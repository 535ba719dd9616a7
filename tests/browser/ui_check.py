#!/usr/bin/env python3
"""Drives Baton's web UI in headless Chromium (selenium + Debian's chromium and chromium-driver).

Run by tests/web_ui.rs against a real three-node cluster; usable by hand against any node:

    python3 tests/browser/ui_check.py --base http://127.0.0.1:8081 --out /tmp/shots \
        --workflow ui_demo --input '{"file": "movie.mov"}' --tasks 2

It opens the cluster view and waits for every member to answer with exactly one leader (cluster.png), opens the
definitions and starts the workflow through its form (definitions.png), lands on the detail page and waits until
the workflow and every task show COMPLETED (workflow.png), then finds the run in the workflow list (workflows.png).
Every wait is a WebDriverWait on what the page shows, never a fixed sleep. It also checks that the page logged no
errors and that markup in the workflow's input was shown as text, not run. Exit 0 on success, 1 with the reason (and
failure.png) otherwise, 2 when selenium or Chromium is missing.
"""

import argparse
import json
import os
import shutil
import sys
import time

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"ui_check: selenium is not installed ({e}); run scripts/setup-tests.sh", file=sys.stderr)
    sys.exit(2)

WIDTH = 1400


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the node's HTTP base URL, e.g. http://127.0.0.1:8081")
    p.add_argument("--out", required=True, help="directory for the screenshots")
    p.add_argument("--workflow", required=True, help="workflow definition to start through the UI")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--input", default="{}", help="the workflow input, JSON")
    p.add_argument("--correlation-id", default="ui-check")
    p.add_argument("--members", type=int, default=3, help="members the cluster view must show")
    p.add_argument("--tasks", type=int, required=True, help="task rows the finished workflow must show")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each wait may take")
    return p.parse_args()


def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        print("ui_check: chromium and chromedriver must be installed (apt chromium chromium-driver); "
              "run scripts/setup-tests.sh", file=sys.stderr)
        sys.exit(2)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-proxy-server", "--hide-scrollbars", f"--window-size={WIDTH},900", "--lang=en-US"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)


def wait(driver, seconds, what, condition):
    """Waits until `condition(driver)` is truthy and returns it; the timeout message says what was awaited."""
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}") from None


def screenshot(driver, out, name):
    """A full-page PNG: the viewport is stretched to the page's height (Chromium's device metrics) for the shot."""
    height = driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    height = max(700, min(int(height), 4000))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        path = os.path.join(out, name)
        if not driver.save_screenshot(path):
            raise AssertionError(f"could not save {path}")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"ui_check: screenshot {path}")
    return path


def cluster_ready(members):
    """Every member answering, one leader and the rest followers, and one card marked as the node we look at.
    The page re-renders every second, so each check reads the page in one script (no stale elements)."""
    def check(driver):
        cards, here = driver.execute_script("""
            const cards = [...document.querySelectorAll('[data-testid=member-card]')]
                .map(c => [c.dataset.nodeId, c.dataset.role, c.dataset.reachable]);
            return [cards, document.querySelectorAll('[data-testid=you-are-here]').length];""")
        if len(cards) != members or any(reachable != "true" for _, _, reachable in cards):
            return False
        leaders = [node for node, role, _ in cards if role == "leader"]
        followers = [node for node, role, _ in cards if role == "follower"]
        if len(leaders) != 1 or len(followers) != members - 1 or here != 1:
            return False
        return leaders[0]
    return check


def workflow_done(expected_tasks):
    """The detail page shows COMPLETED, `expected_tasks` task rows and every row and flow step COMPLETED."""
    def check(driver):
        status, rows, steps = driver.execute_script("""
            const status = document.querySelector('[data-testid=workflow-status]');
            const pick = sel => [...document.querySelectorAll(sel)].map(e => [e.dataset.ref, e.dataset.status]);
            return [status ? status.textContent.trim() : null, pick('[data-testid=task-row]'),
                    pick('[data-testid=flow-step]')];""")
        if status != "COMPLETED" or len(rows) != expected_tasks or len(steps) < expected_tasks:
            return False
        if any(st != "COMPLETED" for _, st in rows + steps):
            return False
        return rows
    return check


def run(driver, args):
    t0 = time.monotonic()
    base = args.base.rstrip("/")

    # 1. The cluster view: every member answering, one leader, and which node we are looking at.
    driver.get(f"{base}/")
    leader = wait(driver, args.timeout, f"{args.members} members answering with one leader", cluster_ready(args.members))
    here = wait(driver, args.timeout, "the node that answered",
                lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=answering-node]").text)
    print(f"ui_check: cluster view shows {args.members} members, leader node {leader}; {here} answered")
    wait(driver, args.timeout, "the change log to name the leader",
         lambda d: f"node {leader} is leader" in d.find_element(By.ID, "cluster-events").text)
    screenshot(driver, args.out, "cluster.png")

    # 2. Definitions: start the workflow through its form.
    driver.find_element(By.ID, "nav-definitions").click()
    form_css = f'form[data-testid=start-form][data-name="{args.workflow}"][data-version="{args.version}"]'
    form = wait(driver, args.timeout, f"the start form of {args.workflow} v{args.version}",
                lambda d: (d.find_elements(By.CSS_SELECTOR, form_css) or [False])[0])
    wait(driver, args.timeout, "the task definitions table",
         lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=task-def]"))
    box = form.find_element(By.CSS_SELECTOR, "[data-testid=start-input]")
    box.clear()
    box.send_keys(args.input)
    form.find_element(By.CSS_SELECTOR, "[data-testid=start-correlation]").send_keys(args.correlation_id)
    screenshot(driver, args.out, "definitions.png")
    form.find_element(By.CSS_SELECTOR, "[data-testid=start-button]").click()

    # 3. The detail page: the run completes, every task shown with its status.
    wait(driver, args.timeout, "the detail page of the started workflow",
         lambda d: d.execute_script("return location.hash").startswith("#/workflow/"))
    workflow_id = driver.execute_script("return decodeURIComponent(location.hash.slice('#/workflow/'.length))")
    print(f"ui_check: started {workflow_id} through the form")
    tasks = wait(driver, args.timeout, f"workflow {workflow_id} COMPLETED with {args.tasks} completed tasks",
                 workflow_done(args.tasks))
    print(f"ui_check: detail page shows COMPLETED, tasks {tasks}")
    # Markup in the input is shown as text, never run or parsed.
    injected = driver.execute_script("return window.__xss === undefined && document.querySelectorAll('#view img').length")
    if injected != 0:
        raise AssertionError("markup from the workflow's input was inserted into the page")
    # Open the first task's output so the screenshot shows one.
    driver.execute_script("document.querySelector('[data-testid=task-row] [data-testid=task-output] summary')?.click()")
    screenshot(driver, args.out, "workflow.png")

    # 4. The list finds the run (GET /api/workflow/search).
    driver.get(f"{base}/#/workflows?correlationId={args.correlation_id}")
    row_css = f'[data-testid=workflow-row][data-workflow-id="{workflow_id}"][data-status="COMPLETED"]'
    wait(driver, args.timeout, "the run in the workflow list", lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    driver.get(f"{base}/#/workflows")
    wait(driver, args.timeout, "the unfiltered workflow list", lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    screenshot(driver, args.out, "workflows.png")

    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    if errors:
        raise AssertionError("the page logged errors: " + json.dumps(errors, indent=1))
    print(f"ui_check: passed in {time.monotonic() - t0:.1f} s")


def main():
    args = parse_args()
    # Everything here is on loopback: neither selenium's connection to chromedriver nor Chromium (--no-proxy-server)
    # may go through a proxy from the environment.
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    os.makedirs(args.out, exist_ok=True)
    try:
        driver = browser()
    except WebDriverException as e:
        print(f"ui_check: could not start headless Chromium: {e}; run scripts/setup-tests.sh", file=sys.stderr)
        return 2
    try:
        run(driver, args)
        return 0
    except (AssertionError, WebDriverException) as e:
        print(f"ui_check: FAILED: {e}", file=sys.stderr)
        try:
            screenshot(driver, args.out, "failure.png")
            for entry in driver.get_log("browser"):
                print(f"ui_check: browser log: {entry}", file=sys.stderr)
            print(f"ui_check: at {driver.current_url}", file=sys.stderr)
        except WebDriverException:
            pass
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
