// Everything the page shows about a run is derived from its events, so a reload, a second tab
// and a finished run all show the same thing. Events may arrive twice (a stream that replays
// its history after a reconnect); each is keyed and counted once. Training, self-play and
// reasoning runs share the event format: a self-play step carries reward_* and kl instead of a
// plain loss; a reasoning step carries per task type {type}_valid_rate and {type}_solve_acc, and
// its evals {type}_acc (held-out tasks, greedy).

const LOG_LIMIT = 400;
export const TASK_TYPES = ["deduction", "abduction", "induction"];

const perType = () => Object.fromEntries(TASK_TYPES.map((k) => [k, []]));

/** The mean of the finite values, or null. */
function meanOf(values) {
  const xs = values.filter(Number.isFinite);
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
}

/** A message an event carries by code and parameters ({code, params, message}), kept so the log
 * is rendered in the page's language when it is shown; null for a plain text. */
function coded(m) {
  if (m && typeof m === "object" && typeof m.code === "string") {
    return { code: m.code, params: m.params || {}, message: typeof m.message === "string" ? m.message : "" };
  }
  return null;
}

/** A run record's message as {code, params, message} for i18n's messageText: the API names it
 * message_code/message_params (a run's own ``params`` are its settings); code/params from older answers. */
export function runMessage(run) {
  if (!run) return "";
  if (typeof run.message_code === "string") return { code: run.message_code, params: run.message_params || {}, message: run.message };
  if (typeof run.code === "string") return { code: run.code, params: run.params || {}, message: run.message };
  return { message: run.message ?? "" };
}

function eventKey(e) {
  if (Number.isInteger(e.seq)) return `#${e.seq}`;
  return [e.type, e.step ?? "", e.time ?? "", e.state ?? "", e.prompt ?? "", e.path ?? ""].join("|");
}

/** Keep only points with x <= step: a resumed run rewrites history after its checkpoint. */
function cut(points, step) {
  let n = points.length;
  while (n && points[n - 1][0] > step) n--;
  if (n !== points.length) points.length = n;
}

function pushPoint(points, x, y) {
  if (!Number.isFinite(x) || !Number.isFinite(y)) return;
  const last = points[points.length - 1];
  if (last && last[0] === x) { last[1] = y; return; }
  if (last && last[0] > x) {
    // out of order (should not happen after cut); insert in place
    let i = points.length - 1;
    while (i > 0 && points[i - 1][0] > x) i--;
    points.splice(i, 0, [x, y]);
    return;
  }
  points.push([x, y]);
}

export class RunState {
  constructor(runId) {
    this.runId = runId;
    this.seen = new Set();
    this.count = 0;
    this.version = 0;
    this.loss = [];
    this.valLoss = [];
    this.valBpb = [];
    this.xzBpb = null;     // xz's bits per byte on the same held-out text: the bar a model should beat
    this.milestones = [];  // {step, code, params, message}, oldest first
    this.realWords = null; // the latest share of written words found in the books
    this.lr = [];
    this.tps = [];
    this.reward = [];      // self-play: mean reward of each step's rollouts
    this.evalReward = [];  // self-play: mean reward of the eval samples (fixed prompts)
    this.kl = [];
    this.acc = perType();    // reasoning: held-out accuracy per task type (eval events)
    this.valid = perType();  // reasoning: share of valid proposals per task type (step events)
    this.solve = perType();  // reasoning: solver accuracy per task type on the step's tasks
    this.checkpoints = 0;    // reasoning: a new checkpoint means new buffers to show
    this.kind = null;      // from the start event ("selfplay", "reason"); null for training
    this.samples = [];
    this.log = [];
    this.logTotal = 0;
    this.lastStep = null;
    this.lastEval = null;
    this.lastStatus = null;
    this.startInfo = null;
    this.step = 0;
    this.maxIterations = null;
    this.bestBpb = null;
    this.tokensSeen = null;
    this.lastTime = null;
    this.maxSeq = -1;
  }

  /** Returns true when the event was new. */
  ingest(e) {
    if (!e || typeof e !== "object" || !e.type) return false;
    const key = eventKey(e);
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    this.count++;
    this.version++;
    if (Number.isInteger(e.seq) && e.seq > this.maxSeq) this.maxSeq = e.seq;
    if (e.time) this.lastTime = Math.max(this.lastTime || 0, e.time);
    if (Number.isFinite(e.max_iterations)) this.maxIterations = e.max_iterations;
    switch (e.type) {
      case "step":
        this.lastStep = e;
        this.step = Math.max(this.step, e.step || 0);
        pushPoint(this.loss, e.step, e.loss);
        pushPoint(this.lr, e.step, e.lr);
        pushPoint(this.tps, e.step, e.tokens_per_s);
        pushPoint(this.reward, e.step, e.reward_mean);
        pushPoint(this.kl, e.step, e.kl);
        if (Number.isFinite(e.tokens_seen)) this.tokensSeen = e.tokens_seen;
        for (const k of TASK_TYPES) {
          pushPoint(this.valid[k], e.step, e[`${k}_valid_rate`]);
          pushPoint(this.solve[k], e.step, e[`${k}_solve_acc`]);
        }
        if (TASK_TYPES.some((k) => `${k}_solve_acc` in e)) {
          this.addLog(e, "log.rs_step", {
            step: e.step, loss: e.loss, pps: e.programs_per_s,
            valid: meanOf(TASK_TYPES.map((k) => e[`${k}_valid_rate`])),
            solved: meanOf(TASK_TYPES.map((k) => e[`${k}_solve_acc`])),
          });
        } else if (Number.isFinite(e.reward_mean)) this.addLog(e, "log.sp_step", { step: e.step, reward: e.reward_mean, kl: e.kl, tps: e.tokens_per_s });
        else this.addLog(e, "log.step", { step: e.step, loss: e.loss, lr: e.lr, tps: e.tokens_per_s });
        break;
      case "eval":
        this.lastEval = e;
        pushPoint(this.valLoss, e.step, e.val_loss);
        pushPoint(this.valBpb, e.step, e.val_bpb);
        if (Number.isFinite(e.xz_bpb)) this.xzBpb = e.xz_bpb;
        pushPoint(this.evalReward, e.step, e.sample_reward);
        if (Number.isFinite(e.val_bpb) && (this.bestBpb == null || e.val_bpb < this.bestBpb)) this.bestBpb = e.val_bpb;
        for (const k of TASK_TYPES) pushPoint(this.acc[k], e.step, e[`${k}_acc`]);
        if (Number.isFinite(e.mean_acc)) this.addLog(e, "log.rs_eval", { step: e.step, deduction: e.deduction_acc, abduction: e.abduction_acc, induction: e.induction_acc });
        else if (Number.isFinite(e.sample_reward)) this.addLog(e, "log.sp_eval", { step: e.step, bpb: e.val_bpb, reward: e.sample_reward, rep4: e.sample_rep4 });
        else this.addLog(e, "log.eval", { step: e.step, loss: e.val_loss, ppl: e.val_ppl, bpb: e.val_bpb });
        break;
      case "sample":
        // one log line per step's samples, however many prompts it wrote
        if (!this.samples.length || this.samples[this.samples.length - 1].step !== e.step) this.addLog(e, "log.sample", { step: e.step });
        this.samples.push({ step: e.step, prompt: e.prompt ?? "", text: e.text ?? "", time: e.time, reward: e.reward, rank: e.rank });
        if (this.samples.length > 500) this.samples.shift();
        break;
      case "checkpoint":
        this.checkpoints++;
        this.addLog(e, e.best ? "log.checkpoint_best" : "log.checkpoint", { step: e.step });
        break;
      case "status": {
        this.lastStatus = e;
        if (Number.isFinite(e.step)) {
          if (e.state === "resumed" || e.state === "started") {
            const perTypeSeries = [this.acc, this.valid, this.solve].flatMap((o) => Object.values(o));
            for (const arr of [this.loss, this.lr, this.tps, this.valLoss, this.valBpb, this.reward, this.evalReward, this.kl, ...perTypeSeries]) cut(arr, e.step);
            this.samples = this.samples.filter((s) => s.step <= e.step);
            this.milestones = this.milestones.filter((m) => !(m.step > e.step));
            if (this.lastStep && this.lastStep.step > e.step) this.lastStep = null;
            this.step = e.step;
          } else {
            this.step = Math.max(this.step, e.step);
          }
        }
        if (e.state === "started" || e.state === "resumed") {
          this.startInfo = e;
          if (e.kind) this.kind = e.kind;
        }
        if (e.summary && Number.isFinite(e.summary.best_val_bpb)) {
          this.bestBpb = this.bestBpb == null ? e.summary.best_val_bpb : Math.min(this.bestBpb, e.summary.best_val_bpb);
        }
        if (e.state === "started" && e.kind === "selfplay") {
          const start = e.start || {};
          this.addLog(e, "log.sp_started", { device: e.device ?? "?", params: e.parameters ?? 0, step: start.step ?? 0, reward: Object.keys(e.reward_weights || {}) });
        } else if (e.state === "started" && e.kind === "reason") {
          const rc = e.reason_config || {};
          this.addLog(e, "log.rs_started", { device: e.device ?? "?", params: e.parameters ?? 0, step: (e.start || {}).step ?? 0, mode: rc.mode ?? "?", format: e.prompt_format ?? "?" });
        } else if (e.state === "started") {
          this.addLog(e, "log.started", { device: e.device ?? "?", threads: e.threads ?? "?", params: e.parameters ?? 0, tokens: e.train_tokens ?? 0 });
        } else if (e.state === "resumed") {
          this.addLog(e, "log.resumed", { step: e.step ?? 0, device: e.device ?? "?" });
        } else {
          // a coded status is a whole sentence with the state and the step ("Stopped at step 397: …")
          const msg = coded(e);
          const step = e.step ?? this.step;
          // before the first step the step says nothing: "Queued", "Started" (not "Running at step 0")
          const key = msg ? "log.message" : `log.${e.message ? "status_msg" : "status"}${step ? "" : "_start"}`;
          const state = !step && e.state === "running" ? "started" : e.state;
          this.addLog(e, key, { state, step, message: e.message ?? "" }, { state: e.state, msg });
        }
        for (const w of e.warnings || []) this.addLog(e, "log.warning", { message: typeof w === "string" ? w : w && w.message || "" }, { msg: coded(w) });
        break;
      }
      case "log":
        this.addLog(e, "log.message", { message: e.message ?? "" }, { msg: coded(e) });
        break;
      case "milestone":
        this.milestones.push({ step: e.step, code: e.code, params: e.params || {}, message: e.message ?? "" });
        this.addLog(e, "monitor.milestone_log", { step: e.step ?? this.step, message: e.message ?? "" }, { msg: coded(e) });
        break;
      case "quality":
        if (Number.isFinite(e.real_words)) this.realWords = e.real_words;
        this.addLog(e, "monitor.quality_log", { step: e.step ?? this.step, share: e.real_words });
        break;
      default:
        this.addLog(e, "log.other", { type: e.type, data: JSON.stringify(e) });
    }
    return true;
  }

  addLog(e, key, params, extra = {}) {
    this.log.push({ time: e.time, key, params, ...extra });
    this.logTotal++;
    if (this.log.length > LOG_LIMIT) this.log.splice(0, this.log.length - LOG_LIMIT);
  }
}
