// A grouped bar chart with error bars, drawn as inline SVG (no chart library to vendor).

import { fmtMetric, h } from "./dom.js";

export const PALETTE = ["#2557d6", "#f08c00", "#12a150", "#d6336c", "#7048e8", "#0c8599", "#a61e4d", "#5c940d"];

const WIDTH = 640;
const HEIGHT = 300;
const MARGIN = { top: 18, right: 12, bottom: 58, left: 52 };

/** Round numbers for the axis: 1, 2 or 5 times a power of ten. */
function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

function domain(values) {
  let lo = 0;
  let hi = 0;
  for (const { value, stderr } of values) {
    const e = Number.isFinite(stderr) ? stderr : 0;
    lo = Math.min(lo, value - e);
    hi = Math.max(hi, value + e);
  }
  // Scores that are proportions are drawn on 0..1 so charts of different runs compare honestly.
  if (lo >= 0 && hi <= 1) return { lo: 0, hi: 1, step: 0.2 };
  if (hi === lo) hi = lo + 1;
  const step = niceStep(hi - lo, 5);
  return { lo: Math.floor(lo / step) * step, hi: Math.ceil(hi / step) * step, step };
}

/**
 * categories: ["task", ...]; series: [{name, color, values: [{value, stderr} | null per category]}].
 * Returns an <svg> with one group of bars per category and one bar per series.
 */
export function groupedBarChart({ categories, series, label }) {
  const present = series.flatMap((s) => s.values.filter((v) => v && Number.isFinite(v.value)));
  const { lo, hi, step } = domain(present);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const y = (v) => MARGIN.top + plotH - ((Math.max(lo, Math.min(hi, v)) - lo) / (hi - lo)) * plotH;
  const band = plotW / Math.max(1, categories.length);
  const groupW = Math.min(band * 0.76, series.length * 84);
  const barW = groupW / Math.max(1, series.length);

  const svg = h("svg:svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label, class: "bar-chart",
  });
  const grid = h("svg:g", { class: "grid axis" });
  for (let v = lo, i = 0; v <= hi + step / 1000 && i < 50; v += step, i += 1) {
    const yy = y(v);
    grid.append(
      h("svg:line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: yy, y2: yy }),
      h("svg:text", { x: MARGIN.left - 8, y: yy + 4, "text-anchor": "end" }, fmtAxis(v, step)),
    );
  }
  svg.append(grid);

  const bars = h("svg:g", { class: "bars" });
  const zero = y(Math.max(lo, Math.min(hi, 0)));
  categories.forEach((category, ci) => {
    const x0 = MARGIN.left + ci * band + (band - groupW) / 2;
    series.forEach((s, si) => {
      const point = s.values[ci];
      if (!point || !Number.isFinite(point.value)) return;
      const x = x0 + si * barW + barW * 0.08;
      const w = barW * 0.84;
      const top = Math.min(y(point.value), zero);
      const height = Math.max(Math.abs(zero - y(point.value)), 1.5);
      const err = Number.isFinite(point.stderr) ? point.stderr : null;
      const tip = `${s.name} · ${category}: ${fmtMetric(point.value)}${err !== null ? ` ± ${fmtMetric(err)}` : ""}`;
      const g = h("svg:g", { class: "bar", dataset: { series: s.name, category } }, h("svg:title", {}, tip));
      g.append(h("svg:rect", { x, y: top, width: w, height, fill: s.color, rx: 2 }));
      let labelY = y(point.value) - 4;
      if (err !== null && err > 0) {
        const cx = x + w / 2;
        const y1 = y(point.value - err);
        const y2 = y(point.value + err);
        const cap = Math.min(8, w / 3);
        g.append(
          h("svg:line", { class: "err", x1: cx, x2: cx, y1, y2 }),
          h("svg:line", { class: "err", x1: cx - cap, x2: cx + cap, y1, y2: y1 }),
          h("svg:line", { class: "err", x1: cx - cap, x2: cx + cap, y1: y2, y2 }),
        );
        labelY = Math.min(labelY, y2 - 4);
      }
      if (w >= 26) {
        g.append(h("svg:text", { class: "val", x: x + w / 2, y: Math.max(MARGIN.top - 4, labelY), "text-anchor": "middle" }, fmtShort(point.value)));
      }
      bars.append(g);
    });
  });
  svg.append(bars);
  svg.append(h("svg:line", { class: "baseline", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: zero, y2: zero }));

  const axis = h("svg:g", { class: "axis" });
  const rotate = categories.some((c) => c.length * 6.5 > band);
  categories.forEach((category, ci) => {
    const cx = MARGIN.left + ci * band + band / 2;
    const shown = category.length > 28 ? `${category.slice(0, 27)}…` : category;
    axis.append(
      rotate
        ? h("svg:text", { x: cx, y: HEIGHT - MARGIN.bottom + 14, "text-anchor": "end", transform: `rotate(-25 ${cx} ${HEIGHT - MARGIN.bottom + 14})` }, h("svg:title", {}, category), shown)
        : h("svg:text", { x: cx, y: HEIGHT - MARGIN.bottom + 18, "text-anchor": "middle" }, h("svg:title", {}, category), shown),
    );
  });
  svg.append(axis);
  return svg;
}

function fmtAxis(v, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  return Math.abs(v) < step / 1e6 ? "0" : v.toFixed(Math.min(decimals, 6));
}

function fmtShort(v) {
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString();
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(3);
}
