// A small canvas line chart: several series, linear or log y axis, nice ticks, hover read-out,
// HiDPI and resize aware. No dependencies.

/** Exponential moving average with bias correction (as TensorBoard's smoothing slider). */
export function smooth(points, weight) {
  if (!weight || weight <= 0 || points.length < 2) return points;
  const out = new Array(points.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < points.length; i++) {
    const [x, y] = points[i];
    if (!Number.isFinite(y)) { out[i] = [x, y]; continue; }
    last = last * weight + (1 - weight) * y;
    n++;
    out[i] = [x, last / (1 - Math.pow(weight, n))];
  }
  return out;
}

function niceStep(range, count) {
  const raw = range / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  const step = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  return step * mag;
}

/** Round values from lo to hi, about `count` of them, `minStep` apart at least (1: steps). */
export function niceTicks(lo, hi, count, minStep = 0) {
  if (!(hi > lo)) return [lo];
  const step = Math.max(minStep, niceStep(hi - lo, count));
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return ticks;
}

function logTicks(lo, hi, count) {
  // lo, hi are real values (> 0)
  const out = [];
  for (const mults of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    out.length = 0;
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
      for (const m of mults) {
        const v = m * Math.pow(10, k);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
      }
    }
    if (out.length >= Math.min(3, count)) break;
  }
  if (out.length < 2) return niceTicks(lo, hi, count).filter((v) => v > 0);
  if (out.length > count * 1.5) {
    const every = Math.ceil(out.length / count);
    return out.filter((_, i) => i % every === 0);
  }
  return out.slice();
}

function nearestIndex(points, x) {
  let lo = 0;
  let hi = points.length - 1;
  if (hi < 0) return -1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < x) lo = mid; else hi = mid;
  }
  return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? lo : hi;
}

function cssVar(el, name, fallback) {
  const v = getComputedStyle(el).getPropertyValue(name).trim();
  return v || fallback;
}

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} opts  logY, formatX(v), formatY(v), emptyText(), legendEl, xTitle(),
   *                       yRange: [lo, hi] fixed (rates: 0 and 1 stay put as points arrive)
   */
  constructor(canvas, opts = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.opts = {
      logY: false,
      formatX: (v) => String(Math.round(v)),
      formatY: (v) => String(+v.toPrecision(3)),
      emptyText: () => "",
      xTitle: () => "",
      legendEl: null,
      ...opts,
    };
    this.series = [];
    this.hoverX = null;
    this._raf = 0;
    if (!canvas.hasAttribute("role")) canvas.setAttribute("role", "img");
    this._ro = new ResizeObserver(() => this.requestDraw());
    this._ro.observe(canvas);
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect();
      this.hoverPx = e.clientX - r.left;
      this.requestDraw();
    });
    canvas.addEventListener("mouseleave", () => { this.hoverPx = null; this.requestDraw(); });
  }

  /** series: [{label, color, points: [[x, y], ...] sorted by x, dash?, width?, markers?}] */
  setSeries(series) {
    this.series = series;
    const total = series.reduce((n, s) => n + s.points.length, 0);
    this.canvas.dataset.points = String(total);
    this.renderLegend();
    this.requestDraw();
  }

  setLogY(on) { this.opts.logY = !!on; this.requestDraw(); }

  renderLegend() {
    const el = this.opts.legendEl;
    if (!el) return;
    el.replaceChildren();
    for (const s of this.series) {
      if (s.legend === false) continue;
      const item = document.createElement("span");
      item.className = "legend-item";
      const sw = document.createElement("span");
      sw.className = "legend-swatch" + (s.dash ? " dashed" : "");
      sw.style.setProperty("--swatch", s.color);
      item.append(sw, document.createTextNode(s.label));
      el.append(item);
    }
  }

  requestDraw() {
    if (this._raf) return;
    this._raf = requestAnimationFrame(() => { this._raf = 0; this.draw(); });
  }

  draw() {
    const { canvas, ctx, opts } = this;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const colText = cssVar(canvas, "--chart-text", "#667");
    const colGrid = cssVar(canvas, "--chart-grid", "#e5e7eb");
    const colAxis = cssVar(canvas, "--chart-axis", "#9ca3af");
    const colTipBg = cssVar(canvas, "--chart-tip-bg", "rgba(17,24,39,.92)");
    const colTipText = cssVar(canvas, "--chart-tip-text", "#fff");
    const font = `12px ${cssVar(canvas, "--font-ui", "system-ui, sans-serif")}`;
    ctx.font = font;

    const logY = opts.logY;
    const series = this.series
      .map((s) => ({ ...s, points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0)) }))
      .filter((s) => s.points.length);
    if (!series.length) {
      ctx.fillStyle = colText;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(opts.emptyText(), w / 2, h / 2);
      return;
    }

    let xMin = Infinity, xMax = -Infinity, yMin = Infinity, yMax = -Infinity;
    for (const s of series) {
      for (const [x, y] of s.points) {
        if (x < xMin) xMin = x;
        if (x > xMax) xMax = x;
        if (y < yMin) yMin = y;
        if (y > yMax) yMax = y;
      }
    }
    if (xMin === xMax) { xMin -= 1; xMax += 1; }
    const fy = logY ? Math.log10 : (v) => v;
    let lo = fy(yMin), hi = fy(yMax);
    // A series that barely changes gets a span of a few percent of its value, not one
    // magnified into a slope, with labels the axis' digits tell apart.
    const span = Math.max(Math.abs(lo + hi) * 0.01, Math.abs(lo) * 1e-6, hi - lo) || 1;
    if (hi - lo < span) { const mid = (lo + hi) / 2; lo = mid - span / 2; hi = mid + span / 2; }
    const padY = (hi - lo) * 0.06;
    lo -= padY; hi += padY;
    if (!logY && yMin >= 0 && lo < 0) lo = 0;
    if (opts.yRange && !logY) {
      const [a, b] = [Math.min(opts.yRange[0], yMin), Math.max(opts.yRange[1], yMax)];
      const pad = (b - a) * 0.04; // points on the bounds stay visible
      [lo, hi] = [a - pad, b + pad];
    }

    const plotTop = 10;
    const plotBottom = h - 24;
    const tickCount = Math.max(2, Math.floor((plotBottom - plotTop) / 36));
    const yTicks = (logY ? logTicks(Math.pow(10, lo), Math.pow(10, hi), tickCount) : niceTicks(lo, hi, tickCount))
      .filter((v, i, all) => i === 0 || opts.formatY(v) !== opts.formatY(all[i - 1]));  // no label twice
    let labelW = 0;
    for (const v of yTicks) labelW = Math.max(labelW, ctx.measureText(opts.formatY(v)).width);
    const plotLeft = Math.ceil(labelW) + 12;
    const plotRight = w - 12;
    const pw = plotRight - plotLeft;
    const ph = plotBottom - plotTop;
    if (pw < 20 || ph < 20) return;
    const sx = (x) => plotLeft + ((x - xMin) / (xMax - xMin)) * pw;
    const sy = (y) => plotBottom - ((fy(y) - lo) / (hi - lo)) * ph;

    // grid and axes
    ctx.lineWidth = 1;
    ctx.strokeStyle = colGrid;
    ctx.fillStyle = colText;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of yTicks) {
      const y = Math.round(sy(v)) + 0.5;
      if (y < plotTop - 1 || y > plotBottom + 1) continue;
      ctx.beginPath(); ctx.moveTo(plotLeft, y); ctx.lineTo(plotRight, y); ctx.stroke();
      ctx.fillText(opts.formatY(v), plotLeft - 6, y);
    }
    const xTicks = niceTicks(xMin, xMax, Math.max(2, Math.floor(pw / 90)), 1);  // steps: whole numbers
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of xTicks) {
      const x = Math.round(sx(v)) + 0.5;
      ctx.strokeStyle = colGrid;
      ctx.beginPath(); ctx.moveTo(x, plotTop); ctx.lineTo(x, plotBottom); ctx.stroke();
      ctx.fillText(opts.formatX(v), x, plotBottom + 6);
    }
    ctx.strokeStyle = colAxis;
    ctx.beginPath(); ctx.moveTo(plotLeft + 0.5, plotTop); ctx.lineTo(plotLeft + 0.5, plotBottom + 0.5); ctx.lineTo(plotRight, plotBottom + 0.5); ctx.stroke();
    const xTitle = opts.xTitle();
    if (xTitle) {
      ctx.textAlign = "right";
      ctx.textBaseline = "bottom";
      ctx.fillText(xTitle, plotRight, plotBottom - 4);
    }

    // series
    ctx.save();
    ctx.beginPath();
    ctx.rect(plotLeft, plotTop - 2, pw + 2, ph + 4);
    ctx.clip();
    for (const s of series) {
      const pts = decimate(s.points, sx, pw);
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.width || 1.75;
      ctx.setLineDash(s.dash || []);
      ctx.lineJoin = "round";
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.markers || s.points.length === 1) {
        ctx.fillStyle = s.color;
        for (const [x, y] of s.points.length <= 400 ? s.points : pts) {
          ctx.beginPath(); ctx.arc(sx(x), sy(y), 2.5, 0, Math.PI * 2); ctx.fill();
        }
      }
    }
    ctx.restore();

    // hover read-out
    if (this.hoverPx != null && this.hoverPx >= plotLeft && this.hoverPx <= plotRight) {
      const xv = xMin + ((this.hoverPx - plotLeft) / pw) * (xMax - xMin);
      const rows = [];
      let snapX = null;
      for (const s of series) {
        const i = nearestIndex(s.points, xv);
        if (i < 0) continue;
        const [px, py] = s.points[i];
        if (snapX == null || Math.abs(px - xv) < Math.abs(snapX - xv)) snapX = px;
        rows.push({ s, px, py });
      }
      if (snapX != null) {
        const x = Math.round(sx(snapX)) + 0.5;
        ctx.strokeStyle = colAxis;
        ctx.setLineDash([3, 3]);
        ctx.beginPath(); ctx.moveTo(x, plotTop); ctx.lineTo(x, plotBottom); ctx.stroke();
        ctx.setLineDash([]);
        for (const r of rows) {
          ctx.fillStyle = r.s.color;
          ctx.beginPath(); ctx.arc(sx(r.px), sy(r.py), 3.5, 0, Math.PI * 2); ctx.fill();
        }
        const lines = [opts.formatX(snapX), ...rows.map((r) => `${r.s.label}: ${opts.formatY(r.py)}`)];
        const tw = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 16;
        const th = lines.length * 16 + 8;
        let tx = x + 10;
        if (tx + tw > w - 4) tx = x - 10 - tw;
        const ty = plotTop + 4;
        ctx.fillStyle = colTipBg;
        roundRect(ctx, tx, ty, tw, th, 6);
        ctx.fill();
        ctx.textAlign = "left";
        ctx.textBaseline = "top";
        lines.forEach((l, i) => {
          ctx.fillStyle = i === 0 ? colTipText : rows[i - 1].s.color;
          if (i > 0) { ctx.fillRect(tx + 8, ty + 6 + i * 16 + 4, 6, 6); }
          ctx.fillStyle = colTipText;
          ctx.fillText(l, tx + (i > 0 ? 18 : 8), ty + 5 + i * 16);
        });
      }
    }
  }
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.moveTo(x + r, y);
  ctx.arcTo(x + w, y, x + w, y + h, r);
  ctx.arcTo(x + w, y + h, x, y + h, r);
  ctx.arcTo(x, y + h, x, y, r);
  ctx.arcTo(x, y, x + w, y, r);
  ctx.closePath();
}

/** Keep the first, lowest, highest and last point of each pixel column for very long series. */
function decimate(points, sx, pw) {
  if (points.length <= pw * 2) return points;
  const out = [];
  let col = null, first, minP, maxP, last;
  const flush = () => {
    if (col == null) return;
    const group = [first, minP, maxP, last].sort((a, b) => a[0] - b[0]);
    for (const p of group) if (out[out.length - 1] !== p) out.push(p);
  };
  for (const p of points) {
    const c = Math.round(sx(p[0]));
    if (c !== col) { flush(); col = c; first = minP = maxP = last = p; continue; }
    if (p[1] < minP[1]) minP = p;
    if (p[1] > maxP[1]) maxP = p;
    last = p;
  }
  flush();
  return out;
}

/** A colour per index that reads on light and dark backgrounds. */
export const PALETTE = ["#2563eb", "#f97316", "#10b981", "#a855f7", "#ef4444", "#0ea5e9", "#eab308", "#ec4899"];
