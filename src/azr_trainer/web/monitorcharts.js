// The run monitor's charts: which curves a run's events make, per kind of run (the loss and
// validation curves of training, the reward and KL of self-play, the per-task-type rates of
// reasoning), smoothed as the page's slider says.

import { t, fmtNum, fmtSci, fmtCompact, fmtPercent } from "./i18n.js";
import { LineChart, smooth, PALETTE } from "./charts.js";
import { TASK_TYPES } from "./runstate.js";
import { $ } from "./ui.js";

export function makeCharts() {
  const fmtStep = (v) => fmtCompact(v);
  const empty = () => t("charts.no_data");
  const stepTitle = () => t("charts.step");
  return {
    loss: new LineChart($("chart-loss"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: empty, xTitle: stepTitle, legendEl: $("chart-loss-legend") }),
    reward: new LineChart($("chart-reward"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: empty, xTitle: stepTitle, legendEl: $("chart-reward-legend") }),
    kl: new LineChart($("chart-kl"), { formatX: fmtStep, formatY: (v) => fmtSci(v), emptyText: empty }),
    bpb: new LineChart($("chart-bpb"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: () => t("charts.no_eval"), legendEl: $("chart-bpb-legend") }),
    lr: new LineChart($("chart-lr"), { formatX: fmtStep, formatY: (v) => fmtSci(v), emptyText: empty }),
    tps: new LineChart($("chart-tps"), { formatX: fmtStep, formatY: (v) => fmtCompact(v), emptyText: empty }),
    // Reasoning: rates per task type, on a fixed 0–100% axis so runs and moments compare by eye.
    rsAcc: new LineChart($("chart-rs-acc"), { formatX: fmtStep, formatY: rate, yRange: [0, 1], emptyText: () => t("charts.no_eval"), xTitle: stepTitle, legendEl: $("chart-rs-acc-legend") }),
    rsValid: new LineChart($("chart-rs-valid"), { formatX: fmtStep, formatY: rate, yRange: [0, 1], emptyText: empty, legendEl: $("chart-rs-valid-legend") }),
    rsSolve: new LineChart($("chart-rs-solve"), { formatX: fmtStep, formatY: rate, yRange: [0, 1], emptyText: empty, legendEl: $("chart-rs-solve-legend") }),
    rsLoss: new LineChart($("chart-rs-loss"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: empty }),
  };
}

const rate = (v) => fmtPercent(v, 0);
export const TYPE_COLORS = { deduction: PALETTE[0], abduction: PALETTE[1], induction: PALETTE[2] };

/** One series per task type. */
function typeSeries(byType, opts = {}) {
  return TASK_TYPES.map((k) => ({ label: t(`reason.kind.${k}`), color: TYPE_COLORS[k], points: byType[k], width: 2, ...opts }));
}

/** A per-step series smoothed with weight w, over its raw points drawn faintly. */
function smoothedSeries(points, w, label, rawLabel, color, rawColor) {
  const raw = w > 0 && points.length > 1 ? [{ label: rawLabel, color: rawColor, points, width: 1, legend: false }] : [];
  return [...raw, { label, color, points: smooth(points, w), width: 2 }];
}

/** Draws `rs` (a RunState) of a run of `kind` on `charts` (from makeCharts). */
export function renderCharts(charts, rs, kind) {
  const w = Number($("mon-smoothing").value);
  $("mon-smoothing-out").textContent = fmtNum(w, 2);
  const logY = $("mon-logscale").checked;
  charts.loss.setLogY(logY);
  charts.reward.setLogY(logY);
  const c = PALETTE;
  charts.loss.setSeries([
    ...smoothedSeries(rs.loss, w, t("charts.train_loss"), t("charts.train_raw"), c[0], "rgba(37,99,235,.22)"),
    { label: t("charts.val_loss"), color: c[1], points: rs.valLoss, dash: [5, 4], markers: true, width: 2 },
  ]);
  charts.reward.setSeries([
    ...smoothedSeries(rs.reward, w, t("charts.reward"), t("charts.reward_raw"), c[2], "rgba(16,185,129,.25)"),
    { label: t("charts.eval_reward"), color: c[1], points: rs.evalReward, dash: [5, 4], markers: true, width: 2 },
  ]);
  const bpbSeries = [{ label: t("charts.val_bpb"), color: c[2], points: rs.valBpb, markers: true }];
  if (Number.isFinite(rs.xzBpb) && rs.valBpb.length) {  // xz's bpb: a flat dashed line across the evals
    const xs = [rs.valBpb[0][0], rs.valBpb[rs.valBpb.length - 1][0]];
    bpbSeries.push({ label: t("monitor.xz_bpb"), color: "#888", points: [...new Set(xs)].map((x) => [x, rs.xzBpb]), dash: [6, 4], width: 1.5 });
  }
  charts.bpb.setSeries(bpbSeries);
  charts.lr.setSeries([{ label: t("charts.lr"), color: c[3], points: rs.lr }]);
  charts.kl.setSeries([{ label: t("charts.kl"), color: c[4], points: rs.kl }]);
  charts.tps.setSeries([{ label: t("charts.tps"), color: c[5], points: smooth(rs.tps, 0.6) }]);
  if (kind === "reason") {
    charts.rsAcc.setSeries(typeSeries(rs.acc, { markers: true }));
    // A rate per step from a handful of tasks is noisy: smoothed like the loss.
    const sm = (byType) => Object.fromEntries(TASK_TYPES.map((k) => [k, smooth(byType[k], w)]));
    charts.rsValid.setSeries(typeSeries(sm(rs.valid)));
    charts.rsSolve.setSeries(typeSeries(sm(rs.solve)));
    charts.rsLoss.setSeries([{ label: t("charts.rs_loss"), color: c[3], points: smooth(rs.loss, w) }]);
  }
}