// Runhouse Gateway dashboard: live states and live output.
//
// Everything that comes from the server is put into the page as text
// (textContent), never parsed as markup. The page's policy allows this file
// and nothing inline.

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

// --- live states (runs list and run page) ----------------------------------

function liveStates() {
  const poll = async () => {
    const ids = [...new Set([...document.querySelectorAll("[data-live]")]
      .filter((el) => !TERMINAL.has(el.textContent.trim()))
      .map((el) => el.dataset.live))].slice(0, 100);
    if (ids.length === 0) return;
    try {
      const query = ids.map((id) => "id=" + encodeURIComponent(id)).join("&");
      const response = await fetch("/ui/runs/states?" + query, { headers: { accept: "application/json" } });
      if (response.ok) {
        for (const s of await response.json()) {
          const id = CSS.escape(s.id);
          for (const el of document.querySelectorAll(`[data-live="${id}"]`)) {
            el.textContent = s.state;
            el.className = "state st-" + s.state;
          }
          for (const el of document.querySelectorAll(`[data-live-duration="${id}"]`)) el.textContent = s.duration;
        }
      }
    } catch (_) {
      // The next poll tries again.
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

// --- ANSI SGR colours ---------------------------------------------------------

const BASIC = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

function xterm256(n) {
  if (n < 16) return null; // named colours use classes
  if (n < 232) {
    const v = [0, 95, 135, 175, 215, 255];
    const i = n - 16;
    return `rgb(${v[Math.floor(i / 36)]}, ${v[Math.floor(i / 6) % 6]}, ${v[i % 6]})`;
  }
  const g = 8 + (n - 232) * 10;
  return `rgb(${g}, ${g}, ${g})`;
}

function applySgr(state, params) {
  const codes = params === "" ? [0] : params.split(";").map((p) => parseInt(p || "0", 10));
  const next = { ...state };
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(next, { fg: null, bg: null, fgRgb: null, bgRgb: null, bold: false, dim: false, italic: false, underline: false });
    else if (c === 1) next.bold = true;
    else if (c === 2) next.dim = true;
    else if (c === 3) next.italic = true;
    else if (c === 4) next.underline = true;
    else if (c === 22) { next.bold = false; next.dim = false; }
    else if (c === 23) next.italic = false;
    else if (c === 24) next.underline = false;
    else if (c >= 30 && c <= 37) { next.fg = BASIC[c - 30]; next.fgRgb = null; }
    else if (c >= 90 && c <= 97) { next.fg = "bright-" + BASIC[c - 90]; next.fgRgb = null; }
    else if (c === 39) { next.fg = null; next.fgRgb = null; }
    else if (c >= 40 && c <= 47) { next.bg = BASIC[c - 40]; next.bgRgb = null; }
    else if (c >= 100 && c <= 107) { next.bg = "bright-" + BASIC[c - 100]; next.bgRgb = null; }
    else if (c === 49) { next.bg = null; next.bgRgb = null; }
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
      const n = codes[i + 2];
      const named = n < 8 ? BASIC[n] : n < 16 ? "bright-" + BASIC[n - 8] : null;
      if (c === 38) { next.fg = named; next.fgRgb = xterm256(n); } else { next.bg = named; next.bgRgb = xterm256(n); }
      i += 2;
    } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      const rgb = `rgb(${codes[i + 2] | 0}, ${codes[i + 3] | 0}, ${codes[i + 4] | 0})`;
      if (c === 38) { next.fg = null; next.fgRgb = rgb; } else { next.bg = null; next.bgRgb = rgb; }
      i += 4;
    }
  }
  return next;
}

// Splits `text` at escape sequences into styled text nodes; returns them and the state after.
function ansiNodes(text, state) {
  const nodes = [];
  const pattern = /\x1b\[([0-9;?]*)([@-~])/g;
  let at = 0;
  let match;
  const push = (chunk) => {
    if (!chunk) return;
    const plain = !state.fg && !state.bg && !state.fgRgb && !state.bgRgb && !state.bold && !state.dim && !state.italic && !state.underline;
    if (plain) { nodes.push(document.createTextNode(chunk)); return; }
    const span = document.createElement("span");
    span.textContent = chunk;
    const classes = [];
    if (state.fg) classes.push("fg-" + state.fg);
    if (state.bg) classes.push("bg-" + state.bg);
    for (const flag of ["bold", "dim", "italic", "underline"]) if (state[flag]) classes.push(flag);
    span.className = classes.join(" ");
    if (state.fgRgb) span.style.color = state.fgRgb;
    if (state.bgRgb) span.style.backgroundColor = state.bgRgb;
    nodes.push(span);
  };
  while ((match = pattern.exec(text)) !== null) {
    push(text.slice(at, match.index));
    if (match[2] === "m") state = applySgr(state, match[1]);
    at = pattern.lastIndex;
  }
  // Drop any other control characters but tab.
  push(text.slice(at).replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ""));
  return [nodes, state];
}

// --- live output ---------------------------------------------------------------

const MAX_LINES = 5000;

class LogView {
  constructor(el) {
    this.el = el;
    this.notice = document.createElement("p");
    this.notice.className = "hint";
    this.notice.hidden = true;
    el.before(this.notice);
    this.line = null; // the line being written
    this.raw = ""; // its text so far
    this.stream = null;
    this.lineStart = {}; // ANSI state where the current line starts
    this.dropped = 0;
  }

  append(entry) {
    if (this.stream !== entry.stream && this.raw !== "") this.newline();
    this.stream = entry.stream;
    const parts = entry.text.split("\n");
    parts.forEach((part, i) => {
      if (i > 0) this.newline();
      this.raw += part;
      // A carriage return rewrites the line (progress bars): keep only the
      // text after the last one that something followed.
      const cut = this.raw.slice(0, -1).lastIndexOf("\r");
      if (cut >= 0) this.raw = this.raw.slice(cut + 1);
    });
    this.render();
  }

  render() {
    if (this.line === null) {
      if (this.raw === "") return;
      this.line = document.createElement("div");
      this.line.className = "line " + this.stream;
      this.el.append(this.line);
      this.trim();
    }
    const shown = this.raw.endsWith("\r") ? this.raw.slice(0, -1) : this.raw;
    const [nodes, state] = ansiNodes(shown, this.lineStart);
    this.line.replaceChildren(...nodes);
    this.lineEnd = state;
    this.el.scrollTop = this.el.scrollHeight;
  }

  newline() {
    this.render();
    if (this.line === null) {
      // An empty line.
      this.line = document.createElement("div");
      this.line.className = "line " + this.stream;
      this.line.append(document.createTextNode("\u200b"));
      this.el.append(this.line);
      this.trim();
    } else {
      this.lineStart = this.lineEnd || this.lineStart;
    }
    this.line = null;
    this.raw = "";
  }

  trim() {
    while (this.el.childElementCount > MAX_LINES) {
      this.el.firstElementChild.remove();
      this.dropped++;
    }
    if (this.dropped > 0) {
      this.notice.hidden = false;
      this.notice.textContent = `${this.dropped} earlier lines are not shown here; download the output for all of it.`;
    }
  }
}

function liveOutput() {
  const el = document.getElementById("log");
  if (!el) return;
  const summary = document.querySelector("[data-run]");
  const view = new LogView(el);
  const source = new EventSource(el.dataset.src);
  source.addEventListener("log", (event) => view.append(JSON.parse(event.data)));
  source.addEventListener("end", () => {
    source.close();
    el.dataset.ended = "true";
    // The run finished while this page was open: show its outcome.
    if (summary && summary.dataset.terminal === "false") location.reload();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveStates();
  liveOutput();
});
