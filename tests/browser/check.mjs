// What a user sees, checked in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Prints one JSON object; tests/browser.rs asserts on it.
//
//   node check.mjs hparams http://127.0.0.1:PORT OUT_DIR   TensorBoard's HPARAMS tab + its HTTP API
//   node check.mjs report  /abs/path/report.html OUT_DIR   charlab's HTML report
//
// Screenshots go to OUT_DIR (hparams.png, report.png).
import { chromium } from 'playwright-core';

const [mode, target, outDir] = process.argv.slice(2);

// Every text node of the page, shadow roots included (TensorBoard's dashboards are web
// components; `innerText` does not see into them).
function deepText() {
  const out = [];
  const walk = (n) => {
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) {
      if (c.nodeType === 3) {
        const t = c.textContent.trim();
        if (t) out.push(t);
      } else if (c.nodeType === 1 || c.nodeType === 11) {
        walk(c);
      }
    }
  };
  walk(document.body);
  return out;
}

async function post(url, body) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return r.json();
}

async function hparams(page, base) {
  const experiment = await post(`${base}/data/plugin/hparams/experiment`, {
    experimentName: '',
    includeMetrics: true,
  });
  const groups = await post(`${base}/data/plugin/hparams/session_groups`, {
    experimentName: '',
    allowedStatuses: ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE', 'STATUS_RUNNING'],
    colParams: [],
    startIndex: 0,
    sliceSize: 100,
  });
  await page.goto(`${base}/#hparams`);
  // The table fills in once the dashboard has fetched the session groups.
  const deadline = Date.now() + 30000;
  let text = [];
  while (Date.now() < deadline) {
    text = await page.evaluate(deepText);
    if (text.some((t) => t.includes('Trial ID')) && text.length > 40) break;
    await page.waitForTimeout(500);
  }
  await page.waitForTimeout(1500);
  text = await page.evaluate(deepText);
  await page.screenshot({ path: `${outDir}/hparams.png`, fullPage: true });
  return {
    api_hparams: (experiment.hparamInfos || []).map((h) => ({ name: h.name, differs: !!h.differs })),
    api_metrics: (experiment.metricInfos || []).map((m) => m.name.tag),
    api_groups: (groups.sessionGroups || []).map((g) => g.name),
    text,
  };
}

async function report(page, file) {
  await page.goto(`file://${file}`);
  const charts = await page.$$eval('figure.chart', (figs) =>
    figs.map((f) => {
      const svg = f.querySelector('svg');
      const box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
      return {
        id: f.id,
        marks: svg ? svg.querySelectorAll('path, polyline, line, rect, circle').length : 0,
        width: box.width,
        height: box.height,
      };
    }),
  );
  const notes = await page.$$eval('p.note', (ps) => ps.map((p) => p.textContent));
  const sample = await page.$eval('#sample', (e) => e.textContent).catch(() => null);
  // The runs' table is the first; the budget's follows its heading.
  const rows = await page.$$eval('table', (ts) => ts[0].querySelectorAll('tbody tr').length);
  const budget = await page.$$eval('h2', (hs) => {
    const h = hs.find((x) => x.textContent.startsWith('How the sweep spent'));
    const t = h && h.nextElementSibling;
    return t ? [...t.querySelectorAll('tbody tr')].map((tr) => tr.textContent) : [];
  });
  const external = await page.$$eval('script, link, img, iframe', (els) => els.length);
  await page.screenshot({ path: `${outDir}/report.png`, fullPage: true });
  return { charts, notes, sample, rows, budget, external };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
const errors = [];
page.on('console', (m) => {
  if (m.type() === 'error') errors.push(m.text());
});
page.on('pageerror', (e) => errors.push(String(e)));
const result = mode === 'report' ? await report(page, target) : await hparams(page, target);
await browser.close();
console.log(JSON.stringify({ ...result, errors }));
