// transfigure demo page: plain JavaScript, no build step, no dependencies, only this server's public API
// (GET /models, POST /translate, /sample, /upscale). The API sits at "../" relative to this page.
"use strict";

(() => {
  const API = new URL("../", window.location.href);
  const TOKEN_KEY = "transfigure.token"; // sessionStorage only: gone when the tab closes
  const BICUBIC_MAX_PIXELS = 16e6; // above this the browser's own smoothing stands in (JS would be slow)
  const ZOOM_WINDOW = 48; // zoomed crop side, in output pixels
  const ZOOM_DISPLAY = 240; // its side on screen, in CSS pixels

  const $ = (id) => document.getElementById(id);
  const state = { models: [], byTask: { translate: [], sample: [], upscale: [] }, urls: {} };

  // -- API calls ---------------------------------------------------------------------------------

  class ApiError extends Error {}

  function token() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      return ""; // storage disabled: the page still works on servers without a token
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }

  const STATUS_HINTS = {
    400: "The server refused the request",
    401: "This server needs an API token: enter it under \u201cAPI token\u201d at the top",
    404: "Not found on this server",
    413: "Too large for this server",
    415: "Unsupported content",
    422: "The request was not understood",
    429: "The server is busy: try again in a moment",
    503: "The server is busy or still starting: try again in a moment",
    504: "The server took too long",
  };

  // "busy, retry in N s" from a 429/503's Retry-After (seconds), or null when it has none.
  function retryText(res) {
    if (res.status !== 429 && res.status !== 503) return null;
    const seconds = parseInt(res.headers.get("Retry-After") || "", 10);
    if (!Number.isFinite(seconds) || seconds < 0) return null;
    return `The server is busy: retry in ${Math.max(1, seconds)} s (HTTP ${res.status})`;
  }

  // BentoML wraps our errors in a one-element list: [{"error": "..."}]; the middleware does not.
  async function readableError(res) {
    const retry = retryText(res);
    if (retry) return retry;
    let detail = "";
    const text = await res.text().catch(() => "");
    try {
      let body = JSON.parse(text);
      if (Array.isArray(body)) body = body[0];
      if (body && typeof body === "object") detail = body.error || body.detail || body.message || "";
      if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
    } catch (_) {
      detail = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300);
    }
    const hint = STATUS_HINTS[res.status] || (res.status >= 500 ? "The server failed" : "The request failed");
    return `${hint} (HTTP ${res.status})${detail ? ": " + detail : "."}`;
  }

  async function call(method, path, body, extraHeaders) {
    let res;
    try {
      res = await fetch(new URL(path, API), { method, headers: headers(extraHeaders), body });
    } catch (e) {
      throw new ApiError(`Could not reach the server (${e.message}). Is it still running?`);
    }
    if (!res.ok) {
      if (res.status === 401) openTokenBox();
      throw new ApiError(await readableError(res));
    }
    return res;
  }

  // -- small UI helpers --------------------------------------------------------------------------

  function showError(id, message) {
    const box = $(id);
    box.textContent = message;
    box.hidden = !message;
  }

  // Spinner + text while a request runs; buttons of the panel are disabled meanwhile.
  function busy(task, text) {
    const panel = $("panel-" + task);
    const status = $(task + "-status");
    const buttons = panel.querySelectorAll("form button");
    const started = performance.now();
    panel.setAttribute("aria-busy", "true");
    buttons.forEach((b) => (b.disabled = true));
    status.replaceChildren();
    const spin = document.createElement("span");
    spin.className = "spinner";
    spin.setAttribute("aria-hidden", "true");
    status.append(spin, document.createTextNode(text));
    showError(task + "-error", "");
    return (doneText) => {
      panel.removeAttribute("aria-busy");
      buttons.forEach((b) => (b.disabled = false));
      const secs = ((performance.now() - started) / 1000).toFixed(1);
      status.textContent = doneText ? `${doneText} in ${secs} s.` : "";
    };
  }

  function objectUrl(key, blob) {
    if (state.urls[key]) URL.revokeObjectURL(state.urls[key]);
    state.urls[key] = URL.createObjectURL(blob);
    return state.urls[key];
  }

  function loadImage(img, url) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve(img);
      img.onerror = () => reject(new ApiError("The browser cannot display this image."));
      img.src = url;
    });
  }

  const EXT = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
  function downloadName(file, model, type) {
    const base = (file && file.name ? file.name.replace(/\.[^.]*$/, "") : "image") || "image";
    return `${base}-${model}.${EXT[type] || "png"}`;
  }

  function size(img) {
    return `${img.naturalWidth}\u00d7${img.naturalHeight}`;
  }

  // -- tabs (WAI-ARIA tab pattern: arrows, Home/End move between tabs) ---------------------------

  function setupTabs() {
    const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
    const select = (tab, focus) => {
      tabs.forEach((t) => {
        const on = t === tab;
        t.setAttribute("aria-selected", String(on));
        t.tabIndex = on ? 0 : -1;
        $(t.getAttribute("aria-controls")).hidden = !on;
      });
      if (focus) tab.focus();
      history.replaceState(null, "", "#" + tab.id.replace("tab-", ""));
    };
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => select(tab, false));
      tab.addEventListener("keydown", (e) => {
        const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
        if (to === undefined) return;
        e.preventDefault();
        select(tabs[(to + tabs.length) % tabs.length], true);
      });
    });
    const wanted = $("tab-" + window.location.hash.slice(1));
    if (wanted) select(wanted, false);
  }

  // -- token -------------------------------------------------------------------------------------

  function openTokenBox() {
    const box = $("auth");
    if (!box.open) box.open = true;
  }

  function setupToken() {
    $("token").value = token();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      try {
        window.sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      } catch (_) {
        showError("global-error", "This browser blocks session storage, so the token cannot be kept.");
        return;
      }
      $("auth").open = false;
      loadModels();
    });
    $("token-forget").addEventListener("click", () => {
      try {
        window.sessionStorage.removeItem(TOKEN_KEY);
      } catch (_) {
        /* nothing stored */
      }
      $("token").value = "";
    });
  }

  // -- models ------------------------------------------------------------------------------------

  function headline(card) {
    const m = (card.metrics || []).find((x) => x.name === card.headline_metric) || (card.metrics || [])[0];
    if (!m) return "no measured metric on its card";
    // as shipped: an INT8 model shows its INT8 file's measurement when the card's gate has it
    const gate = card.int8_gate;
    const shipped = card.precision === "int8" && gate && gate.metric === m.name ? gate.int8 : m.value;
    const value = Math.abs(shipped) >= 100 ? shipped.toFixed(1) : Number(shipped.toPrecision(4));
    return `${m.name} ${value} (${m.split})`;
  }

  function describe(card) {
    const frag = document.createDocumentFragment();
    const name = document.createElement("strong");
    name.textContent = card.name;
    frag.append(name, ` \u2014 ${card.description} `);
    const meta = document.createElement("span");
    const extra = card.task === "upscale" ? `, \u00d7${card.scale}` : "";
    meta.textContent = `[${card.method}${extra}; ${headline(card)}]`;
    frag.append(meta);
    return frag;
  }

  function fillSelect(select, cards) {
    const previous = select.value;
    select.replaceChildren();
    const methods = [...new Set(cards.map((c) => c.method))];
    for (const method of methods) {
      // grouped by method (cyclegan, pix2pix, ...) when a task has several
      const group = methods.length > 1 ? document.createElement("optgroup") : select;
      if (group !== select) {
        group.label = method;
        select.append(group);
      }
      for (const c of cards.filter((x) => x.method === method)) group.append(new Option(c.name, c.name));
    }
    if (cards.some((c) => c.name === previous)) select.value = previous;
  }

  function showCard(task) {
    const card = state.models.find((c) => c.name === $(task + "-model").value);
    $(task + "-card").replaceChildren(card ? describe(card) : "");
    if (task === "sample" && card) {
      const labels = $("sample-label");
      const previous = labels.value;
      labels.replaceChildren(...(card.classes || []).map((name) => new Option(name, name)));
      if ((card.classes || []).includes(previous)) labels.value = previous;
      // truncation and mixing only for a style-based model (its card has a "style" record)
      $("sample-style").hidden = !card.style;
      if (card.style) {
        const layer = $("sample-mix-layer");
        layer.max = String(card.style.layers);
        if (Number(layer.value) > card.style.layers) layer.value = String(card.style.layers);
        $("sample-mix-layer-value").textContent = layer.value;
      }
    }
  }

  function renderModelList(listing) {
    const list = $("models-list");
    list.replaceChildren();
    const titles = { translate: "Translate", sample: "Sample (class-conditional)", upscale: "Upscale" };
    for (const task of Object.keys(titles)) {
      const group = document.createElement("div");
      group.className = "models-group";
      const h = document.createElement("h2");
      h.textContent = titles[task];
      const ul = document.createElement("ul");
      for (const card of state.byTask[task]) {
        const li = document.createElement("li");
        li.append(describe(card));
        ul.append(li);
      }
      if (!ul.children.length) ul.append(Object.assign(document.createElement("li"), { textContent: "none loaded" }));
      group.append(h, ul);
      list.append(group);
    }
    const broken = Object.entries(listing.unavailable || {});
    if (broken.length) {
      const group = document.createElement("div");
      group.className = "models-group";
      const h = document.createElement("h2");
      h.textContent = "Unavailable (failed to load)";
      const ul = document.createElement("ul");
      for (const [name, why] of broken) {
        ul.append(Object.assign(document.createElement("li"), { textContent: `${name}: ${why}` }));
      }
      group.append(h, ul);
      list.append(group);
    }
  }

  async function loadModels() {
    showError("global-error", "");
    $("models-status").textContent = "Loading the model list\u2026";
    let listing;
    try {
      listing = await (await call("GET", "models")).json();
    } catch (e) {
      showError("global-error", `The model list could not be loaded. ${e.message}`);
      $("models-status").textContent = "";
      return;
    }
    state.models = listing.models || [];
    for (const task of Object.keys(state.byTask)) {
      state.byTask[task] = state.models.filter((c) => c.task === task);
      fillSelect($(task + "-model"), state.byTask[task]);
      const none = state.byTask[task].length === 0;
      $(task + "-run").disabled = none;
      if (none) {
        $(task + "-card").textContent = `No ${task} model is loaded on this server.`;
      } else {
        showCard(task);
      }
    }
    $("sample-new-seed").disabled = state.byTask.sample.length === 0;
    $("models-status").textContent = listing.message || `${state.models.length} model(s) loaded.`;
    renderModelList(listing);
  }

  // -- drag and drop onto the file inputs --------------------------------------------------------

  function setupDrop(zoneId, inputId) {
    const zone = $(zoneId);
    const input = $(inputId);
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      input.files = e.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    });
  }

  // -- translate ---------------------------------------------------------------------------------

  function setupTranslate() {
    const file = $("translate-file");
    file.addEventListener("change", () => {
      showError("translate-error", "");
      $("translate-result").hidden = true;
    });
    $("translate-model").addEventListener("change", () => showCard("translate"));
    $("translate-overlay").addEventListener("change", (e) => {
      $("translate-compare").classList.toggle("overlay", e.target.checked);
      $("translate-slider-row").hidden = !e.target.checked;
    });
    const split = $("translate-split");
    split.addEventListener("input", () => $("translate-compare").style.setProperty("--split", split.value + "%"));

    $("translate-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = file.files[0];
      if (!f) {
        showError("translate-error", "Choose an image first (or drop one on the box).");
        file.focus();
        return;
      }
      const model = $("translate-model").value;
      const form = new FormData();
      form.append("image", f, f.name);
      form.append("model", model);
      form.append("format", $("translate-format").value);
      const maxSide = $("translate-max-side").value.trim();
      if (maxSide) form.append("max_side", maxSide);
      const done = busy("translate", `Translating with ${model}\u2026`);
      try {
        const res = await call("POST", "translate", form);
        const blob = await res.blob();
        const inImg = $("translate-in");
        const outImg = $("translate-out");
        await Promise.all([
          loadImage(inImg, objectUrl("translate-in", f)),
          loadImage(outImg, objectUrl("translate-out", blob)),
        ]);
        $("translate-in-size").textContent = size(inImg);
        $("translate-out-size").textContent = size(outImg);
        const link = $("translate-download");
        link.href = state.urls["translate-out"];
        link.download = downloadName(f, model, blob.type);
        $("translate-note").textContent =
          outImg.naturalWidth !== inImg.naturalWidth
            ? "The server downscaled the input first (max side)."
            : "";
        $("translate-result").hidden = false;
        done("Translated");
      } catch (err) {
        done("");
        showError("translate-error", err.message);
      }
    });
  }

  // -- sample ------------------------------------------------------------------------------------

  function curlFor(body) {
    const auth = token() ? ` -H "Authorization: Bearer $TRANSFIGURE_API_TOKEN"` : "";
    const url = new URL("sample", API).href;
    return `curl -H 'Content-Type: application/json'${auth} \\\n     -d '${JSON.stringify(body)}' ${url} -o samples.png`;
  }

  function styleCard() {
    const card = state.models.find((c) => c.name === $("sample-model").value);
    return card && card.style ? card : null;
  }

  // The style controls of the request body: truncation, and mix when a second seed is given.
  function styleControls(body) {
    if (!styleCard()) return body;
    const psi = Number($("sample-truncation").value);
    if (psi !== 1) body.truncation = psi;
    const mixSeed = $("sample-mix-seed").value.trim();
    if (mixSeed) body.mix = { seed: Number(mixSeed), layer: Number($("sample-mix-layer").value) };
    return body;
  }

  // One drawing per mixing layer: the first seed alone (no mixing), then the second seed's styles
  // from each layer down to 0 (the second seed alone), with the same truncation.
  async function mixingView() {
    const card = styleCard();
    const seedText = $("sample-seed").value.trim();
    const mixSeed = $("sample-mix-seed").value.trim();
    if (!card || !seedText || !mixSeed) {
      showError("sample-error", "The mixing view needs a seed and a second seed (\u201cMix with seed\u201d).");
      return;
    }
    const done = busy("sample", "Mixing\u2026");
    try {
      const strip = $("sample-mixing-strip");
      const figures = [];
      for (let layer = card.style.layers; layer >= 0; layer--) {
        const body = { model: card.name, label: $("sample-label").value, n: 1, seed: Number(seedText), grid: true };
        const psi = Number($("sample-truncation").value);
        if (psi !== 1) body.truncation = psi;
        body.mix = { seed: Number(mixSeed), layer };
        const res = await call("POST", "sample", JSON.stringify(body), { "Content-Type": "application/json" });
        const img = document.createElement("img");
        img.className = "pixelated";
        img.alt = `Seed ${seedText} with seed ${mixSeed}'s styles from layer ${layer}`;
        await loadImage(img, objectUrl(`mix${layer}`, await res.blob()));
        const fig = document.createElement("figure");
        const cap = document.createElement("figcaption");
        cap.textContent = layer === card.style.layers ? `seed ${seedText}` : layer === 0 ? `seed ${mixSeed}` : `from layer ${layer}`;
        fig.append(img, cap);
        figures.push(fig);
      }
      strip.replaceChildren(...figures);
      $("sample-mixing-caption").textContent =
        `Seed ${seedText} (left) taking seed ${mixSeed}'s styles from ever lower layers (right: seed ${mixSeed} alone)`;
      $("sample-mixing").hidden = false;
      done("Mixed");
    } catch (err) {
      done("");
      showError("sample-error", err.message);
    }
  }

  function setupSample() {
    $("sample-model").addEventListener("change", () => showCard("sample"));
    $("sample-truncation").addEventListener("input", () => {
      $("sample-truncation-value").textContent = Number($("sample-truncation").value).toFixed(2);
    });
    $("sample-mix-layer").addEventListener("input", () => {
      $("sample-mix-layer-value").textContent = $("sample-mix-layer").value;
    });
    $("sample-mix-view").addEventListener("click", () => mixingView());
    const run = async () => {
      const model = $("sample-model").value;
      const n = Number($("sample-n").value || 16);
      const seedText = $("sample-seed").value.trim();
      const body = styleControls({ model, label: $("sample-label").value, n, grid: true });
      if (seedText) body.seed = Number(seedText);
      const done = busy("sample", `Sampling ${n} \u00d7 \u201c${body.label}\u201d\u2026`);
      try {
        const res = await call("POST", "sample", JSON.stringify(body), { "Content-Type": "application/json" });
        const blob = await res.blob();
        const seed = res.headers.get("X-Seed") || seedText;
        await loadImage($("sample-grid"), objectUrl("sample", blob));
        $("sample-seed").value = seed; // "Sample" again reproduces; "New seed" draws another
        $("sample-caption").textContent =
          `${n} \u00d7 \u201c${res.headers.get("X-Label") || body.label}\u201d from ${model}, seed ${seed}`;
        $("sample-curl").textContent = curlFor(Object.assign({}, body, { seed: Number(seed) }));
        const link = $("sample-download");
        link.href = state.urls.sample;
        link.download = `${model}-${body.label}-seed${seed}.png`;
        $("sample-result").hidden = false;
        done(`Sampled (seed ${seed})`);
      } catch (err) {
        done("");
        showError("sample-error", err.message);
      }
    };
    $("sample-form").addEventListener("submit", (e) => {
      e.preventDefault();
      run();
    });
    $("sample-new-seed").addEventListener("click", () => {
      const r = new Uint32Array(1);
      window.crypto.getRandomValues(r);
      $("sample-seed").value = String(r[0] >>> 1); // 31 bits, like the server's own choice
      run();
    });
  }

  // -- upscale -----------------------------------------------------------------------------------

  // Keys' cubic convolution (a = -0.5), the "bicubic" of most image libraries; separable.
  function cubic(t) {
    const a = -0.5;
    t = Math.abs(t);
    if (t < 1) return (a + 2) * t * t * t - (a + 3) * t * t + 1;
    if (t < 2) return a * t * t * t - 5 * a * t * t + 8 * a * t - 4 * a;
    return 0;
  }

  function taps(inSize, outSize) {
    const index = new Int32Array(outSize * 4);
    const weight = new Float32Array(outSize * 4);
    const scale = inSize / outSize;
    for (let o = 0; o < outSize; o++) {
      const centre = (o + 0.5) * scale - 0.5;
      const first = Math.floor(centre) - 1;
      let sum = 0;
      for (let k = 0; k < 4; k++) {
        const w = cubic(centre - (first + k));
        index[o * 4 + k] = Math.min(inSize - 1, Math.max(0, first + k)); // edges are clamped
        weight[o * 4 + k] = w;
        sum += w;
      }
      for (let k = 0; k < 4; k++) weight[o * 4 + k] /= sum;
    }
    return { index, weight };
  }

  function bicubic(src, sw, sh, dw, dh) {
    const tx = taps(sw, dw);
    const ty = taps(sh, dh);
    const rows = new Float32Array(dw * sh * 4); // horizontal pass
    for (let y = 0; y < sh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let c = 0; c < 4; c++) {
          let v = 0;
          for (let k = 0; k < 4; k++) v += tx.weight[x * 4 + k] * src[(y * sw + tx.index[x * 4 + k]) * 4 + c];
          rows[(y * dw + x) * 4 + c] = v;
        }
      }
    }
    const out = new Uint8ClampedArray(dw * dh * 4); // vertical pass
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let c = 0; c < 4; c++) {
          let v = 0;
          for (let k = 0; k < 4; k++) v += ty.weight[y * 4 + k] * rows[(ty.index[y * 4 + k] * dw + x) * 4 + c];
          out[(y * dw + x) * 4 + c] = v;
        }
      }
    }
    return out;
  }

  function drawBicubic(inImg, canvas, w, h) {
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    if (w * h > BICUBIC_MAX_PIXELS) {
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(inImg, 0, 0, w, h);
      return "Smooth resize (browser's own; too large for bicubic here)";
    }
    const sw = inImg.naturalWidth;
    const sh = inImg.naturalHeight;
    const tmp = document.createElement("canvas");
    tmp.width = sw;
    tmp.height = sh;
    const tctx = tmp.getContext("2d");
    tctx.drawImage(inImg, 0, 0);
    const src = tctx.getImageData(0, 0, sw, sh).data;
    ctx.putImageData(new ImageData(bicubic(src, sw, sh, w, h), w, h), 0, 0);
    return "Bicubic";
  }

  const zoom = { x: 0.5, y: 0.5 };

  function drawZoom() {
    const out = $("upscale-out");
    const inImg = $("upscale-in");
    const W = out.naturalWidth;
    const H = out.naturalHeight;
    if (!W || !inImg.naturalWidth) return;
    const side = Math.min(ZOOM_WINDOW, W, H);
    const x0 = Math.round(Math.min(W - side, Math.max(0, zoom.x * W - side / 2)));
    const y0 = Math.round(Math.min(H - side, Math.max(0, zoom.y * H - side / 2)));
    const sx = inImg.naturalWidth / W;
    const sy = inImg.naturalHeight / H;
    const sources = [
      ["zoom-in", inImg, x0 * sx, y0 * sy, side * sx, side * sy],
      ["zoom-bicubic", $("upscale-bicubic"), x0, y0, side, side],
      ["zoom-out", out, x0, y0, side, side],
    ];
    for (const [id, src, a, b, c, d] of sources) {
      const canvas = $(id);
      canvas.width = ZOOM_DISPLAY;
      canvas.height = ZOOM_DISPLAY;
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false; // show the real pixels
      ctx.clearRect(0, 0, ZOOM_DISPLAY, ZOOM_DISPLAY);
      ctx.drawImage(src, a, b, c, d, 0, 0, ZOOM_DISPLAY, ZOOM_DISPLAY);
    }
    $("zoom-where").textContent = `window ${side}\u00d7${side} px at (${x0}, ${y0}) of the output`;
  }

  function setupUpscale() {
    $("upscale-file").addEventListener("change", () => {
      showError("upscale-error", "");
      $("upscale-result").hidden = true;
    });
    $("upscale-model").addEventListener("change", () => showCard("upscale"));
    for (const axis of ["x", "y"]) {
      $("zoom-" + axis).addEventListener("input", (e) => {
        zoom[axis] = Number(e.target.value) / 100;
        drawZoom();
      });
    }
    document.querySelectorAll("#upscale-result .zoomable").forEach((el) => {
      el.addEventListener("click", (e) => {
        const r = el.getBoundingClientRect();
        zoom.x = (e.clientX - r.left) / r.width;
        zoom.y = (e.clientY - r.top) / r.height;
        $("zoom-x").value = String(Math.round(zoom.x * 100));
        $("zoom-y").value = String(Math.round(zoom.y * 100));
        drawZoom();
      });
    });

    $("upscale-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = $("upscale-file").files[0];
      if (!f) {
        showError("upscale-error", "Choose an image first (or drop one on the box).");
        $("upscale-file").focus();
        return;
      }
      const model = $("upscale-model").value;
      const form = new FormData();
      form.append("image", f, f.name);
      form.append("model", model);
      const done = busy("upscale", `Upscaling with ${model}\u2026`);
      try {
        const res = await call("POST", "upscale", form);
        const blob = await res.blob();
        const inImg = $("upscale-in");
        const outImg = $("upscale-out");
        await Promise.all([
          loadImage(inImg, objectUrl("upscale-in", f)),
          loadImage(outImg, objectUrl("upscale-out", blob)),
        ]);
        $("upscale-in-size").textContent = size(inImg);
        $("upscale-out-size").textContent = size(outImg);
        $("upscale-bicubic-caption").textContent = drawBicubic(
          inImg,
          $("upscale-bicubic"),
          outImg.naturalWidth,
          outImg.naturalHeight,
        );
        const link = $("upscale-download");
        link.href = state.urls["upscale-out"];
        link.download = downloadName(f, model, blob.type);
        $("upscale-result").hidden = false;
        drawZoom();
        done("Upscaled");
      } catch (err) {
        done("");
        showError("upscale-error", err.message);
      }
    });
  }

  // -- start -------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    setupTabs();
    setupToken();
    setupDrop("translate-drop", "translate-file");
    setupDrop("upscale-drop", "upscale-file");
    setupTranslate();
    setupSample();
    setupUpscale();
    loadModels();
  });
})();
