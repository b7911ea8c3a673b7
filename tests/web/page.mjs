// Drives the flame-graph page in Debian's Chromium, as a user would: open it for a service,
// read the status line, hover a frame, click to zoom, search, and see a bad filter's error.
// Usage: node page.mjs BASE_URL SCREENSHOT_DIR   (exit 0 = all checks passed)
import { chromium } from "playwright-core";

const [base, shots] = process.argv.slice(2);
let failures = 0;
function check(what, ok, detail) {
  console.log(`${ok ? "ok" : "not ok"} - ${what}${ok ? "" : ": " + detail}`);
  if (!ok) failures++;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  await page.goto(`${base}/?app=deepflow-agent&range=86400`);
  await page.waitForFunction(() => /nodes/.test(document.querySelector("#status").textContent));
  const status = await page.textContent("#status");
  check("status names the service, 10 nodes and the total", /deepflow-agent: 10 nodes, total 50\.5 ms/.test(status), status);

  const box = await page.locator("#flame").boundingBox();
  check("canvas drawn with one row per depth (root + 5 levels)", Math.round(box.height) === 6 * 18, `height ${box.height}`);

  // Row 1 is [t] tokio-runtime-w (80 % of the width, leftmost): hover it.
  await page.mouse.move(box.x + box.width * 0.2, box.y + 18 + 9);
  const tip = await page.textContent("#tip");
  check("tooltip shows the frame with total and share", /\[t\] tokio-runtime-w.*total 40\.4 ms \(80\.00%\)/.test(tip), tip);

  // Click it: zoom. The breadcrumb offers a reset, and the canvas shows the zoomed subtree.
  await page.mouse.click(box.x + box.width * 0.2, box.y + 18 + 9);
  const crumbs = await page.textContent("#crumbs");
  check("click zooms (reset link appears)", /reset zoom/.test(crumbs), crumbs);
  await page.screenshot({ path: `${shots}/page-zoomed.png` });

  await page.fill("[name=search]", "parse");
  const hits = await page.evaluate(() => {
    const c = document.querySelector("#flame"), ctx = c.getContext("2d");
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] === 0xe0 && d[i + 1] === 0x56 && d[i + 2] === 0xfd) n++;
    return n;
  });
  check("search highlights the matching frame", hits > 100, `${hits} highlighted pixels`);

  await page.fill("[name=tag_filter]", "process_id = = 1");
  await page.click("#go");
  await page.waitForFunction(() => document.querySelector("#status").className === "error");
  const err = await page.textContent("#status");
  check("a bad tag_filter shows the server's error with its position", /INVALID_POST_DATA.*position/.test(err), err);
  // Nothing is drawn after an error: hovering and clicking where the graph was must not throw.
  const gone = await page.locator("#flame").boundingBox();
  check("after an error the graph is gone", gone.height === 0, `height ${gone.height}`);
  await page.mouse.move(box.x + box.width * 0.2, box.y + 18 + 9);
  await page.mouse.click(box.x + box.width * 0.2, box.y + 18 + 9);

  await page.fill("[name=tag_filter]", "");
  await page.fill("[name=app_service]", "Total");
  await page.click("#go");
  await page.waitForFunction(() => /Total: /.test(document.querySelector("#status").textContent));
  await page.screenshot({ path: `${shots}/page-total.png` });
  const opts = await page.$$eval("#services option", (os) => os.map((o) => o.value));
  check("Total view lists the processes as service suggestions", opts.includes("process-exporte") && opts.includes("deepflow-agent"), opts.join(","));

  // Off-CPU: Total has none (as DeepFlow), and the page says why instead of "no samples";
  // a process's blocked time reads in seconds; an empty app_service merges the processes.
  const statusAfter = async (url) => {
    await page.goto(url);
    await page.waitForFunction(() => !/Loading/.test(document.querySelector("#status").textContent));
    return page.textContent("#status");
  };
  let st = await statusAfter(`${base}/?app=Total&event=off-cpu&range=86400`);
  check("off-cpu of Total: explains Total is on-CPU only, suggests a process", /Total holds on-CPU samples only.*pick a process/.test(st), st);
  st = await statusAfter(`${base}/?app=offsvc&event=off-cpu&range=86400`);
  check("off-cpu of a process: its tree and blocked time in seconds", /^offsvc: 5 nodes, total 1\.50 s/.test(st), st);
  st = await statusAfter(`${base}/?app=deepflow-agent&event=off-cpu&range=86400`);
  check("a process without off-cpu rows: names the flag that records them", /No off-cpu rows for deepflow-agent.*--off-cpu/.test(st), st);
  await page.fill("[name=app_service]", "");
  await page.click("#go");
  await page.waitForFunction(() => /nodes/.test(document.querySelector("#status").textContent));
  st = await page.textContent("#status");
  check("off-cpu, app_service cleared: the three processes merged, 2.75 s", /^offsvc, offsvc2, statesvc: \d+ nodes, total 2\.75 s/.test(st), st);
  await page.screenshot({ path: `${shots}/page-offcpu.png` });

  // How it blocked: the "blocked" list shows for off-cpu only and narrows the tree to D or S.
  st = await statusAfter(`${base}/?app=statesvc&event=off-cpu&range=86400&state=D`);
  check("off-cpu, blocked D: only the uninterruptible 300 ms", /^statesvc: \d+ nodes, total 300\.0 ms/.test(st), st);
  check("off-cpu: the blocked list is shown", await page.isVisible("[name=state]"), "hidden");
  await page.selectOption("[name=state]", "S");
  await page.click("#go");
  await page.waitForFunction(() => /total 700/.test(document.querySelector("#status").textContent));
  st = await page.textContent("#status");
  check("off-cpu, blocked S: the 700 ms asleep", /total 700\.0 ms/.test(st), st);
  check("the URL keeps the choice", /state=S/.test(page.url()), page.url());
  await page.selectOption("[name=profile_event_type]", "on-cpu");
  check("on-cpu: the blocked list is hidden", !(await page.isVisible("[name=state]")), "visible");
  st = await statusAfter(`${base}/?app=offsvc&event=off-cpu&range=86400&state=D`);
  check("a filter that keeps nothing says so, not that the agent lacks --off-cpu", /No off-cpu rows for offsvc in this range that the filter keeps \(tag\.ember\.offcpu\.state = 'D'\)/.test(st), st);
  await page.goto(`${base}/?range=86400`);
  await page.selectOption("[name=profile_event_type]", "mem-alloc");
  await page.fill("[name=app_service]", "");
  await page.click("#go");
  await page.waitForFunction(() => /rows/.test(document.querySelector("#status").textContent));
  st = await page.textContent("#status");
  check("no service at all (DeepFlow's count 0): the plain empty message, not an error", /^No mem-alloc rows for any service in this range\.$/.test(st), st);

  // Compare with 1 hour earlier: hot_b grew from 30 % to 70 % (red), hot_a shrank (blue).
  st = await statusAfter(`${base}/?app=cmpsvc&range=900&compare=3600`);
  check("compare: the status names the baseline and its total", /Compared with 1 hour earlier \(total 100\.0 ms, scaled/.test(st), st);
  const fb = await page.locator("#flame").boundingBox();
  // Where the page drew each frame (its own layout, whatever the siblings' order).
  const at = async (name) => page.evaluate((nm) => {
    const b = boxes.find((x) => x.n.name === nm);
    return b ? { x: b.x + b.w / 2, y: b.y + 9 } : null;
  }, name);
  const rgb = async (p) => page.evaluate(([x, y]) => {
    const c = document.querySelector("#flame"), r = c.getBoundingClientRect(), k = c.width / r.width;
    return Array.from(c.getContext("2d").getImageData(Math.round(x * k), Math.round(y * k), 1, 1).data.slice(0, 3));
  }, [p.x, p.y]);
  const pa = await at("hot_a"), pb = await at("hot_b");
  const [a, b] = [await rgb(pa), await rgb(pb)];
  check("compare: hot_a drawn blue (shrank)", a[2] === 255 && a[0] === a[1] && a[0] < 200, a.join(","));
  check("compare: hot_b drawn red (grew)", b[0] === 255 && b[1] === b[2] && b[1] < 200, b.join(","));
  const w = await rgb(await at("work"));
  check("compare: work, unchanged, drawn near white", w.every((v) => v >= 240), w.join(","));
  await page.mouse.move(fb.x + pb.x, fb.y + pb.y);
  const ctip = await page.textContent("#tip");
  check("compare: the tooltip gives the share then and now", /1 hour earlier: 30\.00% → now 70\.00% \(\+40\.00 points\)/.test(ctip), ctip);
  await page.screenshot({ path: `${shots}/page-compare.png` });

  // The graph does not wait for the baseline: held back, the graph is drawn in its usual colours
  // and the status says the comparison is coming; released, the colours change.
  let release;
  const held = new Promise((r) => { release = r; });
  await page.route("**/v1/profile/ProfileTracing", async (route) => {
    const b = JSON.parse(route.request().postData() || "{}");
    if (b.time_end < Date.now() / 1000 - 1800) await held; /* the baseline, an hour back */
    await route.continue();
  });
  await page.goto(`${base}/?app=cmpsvc&range=900&compare=3600`);
  await page.waitForFunction(() => /Loading 1 hour earlier to compare/.test(document.querySelector("#status").textContent));
  const early = await rgb(await at("hot_b"));
  check("baseline held: the graph is drawn already, in its usual colours", !(early[0] === 255 && early[1] === early[2]), early.join(","));
  release();
  await page.waitForFunction(() => /Compared with 1 hour earlier/.test(document.querySelector("#status").textContent));
  const late = await rgb(await at("hot_b"));
  check("baseline arrived: hot_b turns red", late[0] === 255 && late[1] === late[2] && late[1] < 200, late.join(","));
  await page.unroute("**/v1/profile/ProfileTracing");
  st = await statusAfter(`${base}/?app=cmpsvc&range=900&compare=period`);
  check("compare with an empty period: says there is nothing to compare", /Nothing to compare: the period before has no rows/.test(st), st);
  const plain = await rgb(await at("hot_b"));
  check("compare with an empty period: the usual colours", !(plain[0] === 255 && plain[1] === plain[2]), plain.join(","));
  check("no JavaScript errors", errors.length === 0, errors.join("; "));
} finally {
  await browser.close();
}
console.log(failures ? `${failures} check(s) failed` : "all checks passed");
process.exit(failures ? 1 : 0);
