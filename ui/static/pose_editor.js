// Pose editor: run by gr.HTML's js_on_load with `element`, `props` and `watch`. props.value is OpenPose JSON
// {"people":[{"pose_keypoints_2d":[x,y,c,...]}],"canvas_width":W,"canvas_height":H} in canvas pixels; setting it
// (on release, never while dragging) makes Gradio send a change event to Python.
(() => {
  const NS = "http://www.w3.org/2000/svg";
  // controlnet_aux's draw_bodypose: limbSeq (made 0-based) and colours; limbs are drawn at 0.6 of the colour.
  const LIMBS = [[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
    [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]];
  const COLOURS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
    [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255],
    [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]];
  const NAMES = ["nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder", "left elbow",
    "left wrist", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle", "right eye",
    "left eye", "right ear", "left ear"];
  const STICK = 4, JOINT = 4, HIT = 12, UNDO_DEPTH = 100;
  const maxPeople = props.max_people || 10;

  const root = element.querySelector(".pe");
  const svg = root.querySelector(".pe-svg");
  const statusLine = root.querySelector(".pe-status");
  const fileInput = root.querySelector(".pe-file");
  const hideButton = root.querySelector("[data-act=hide]");

  let W = 512, H = 512;
  let people = [];  // each: 18 [x, y, c] in canvas pixels, c 1 (shown) or 0 (hidden)
  let selected = 0, hiding = false, drag = null, written = null;
  const history = [];

  const rgb = (c, f = 1) => `rgb(${c.map((v) => Math.floor(v * f)).join(",")})`;
  const round = (v) => Math.round(v * 10) / 10;
  const clampX = (x) => Math.min(W, Math.max(0, x));
  const clampY = (y) => Math.min(H, Math.max(0, y));

  function say(text, error = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("pe-error", error);
  }

  function summary() {
    const hidden = people.reduce((n, p) => n + p.filter((k) => !k[2]).length, 0);
    say(`${people.length} ${people.length === 1 ? "person" : "people"}; person ${selected + 1} picked; ` +
      `${hidden} hidden ${hidden === 1 ? "joint" : "joints"}. Canvas ${W} x ${H}.`);
  }

  // The same compact text Python's openpose_json writes, so an unchanged pose compares equal as text.
  function serialize() {
    return JSON.stringify({
      people: people.map((p) => ({ pose_keypoints_2d: p.flatMap(([x, y, c]) => [round(x), round(y), c ? 1 : 0]) })),
      canvas_width: W, canvas_height: H,
    });
  }

  function finite(values) {
    if (!values.every((v) => typeof v === "number" && Number.isFinite(v))) {
      throw new Error("Keypoint values must be finite numbers.");
    }
  }

  // People as 18 [x, y, c] in 0..1 from OpenPose JSON or a list of 18 [x, y(, visible)] (one person or many).
  function normalised(data) {
    let list, sx = 1, sy = 1;
    if (data && !Array.isArray(data) && typeof data === "object") {
      if (!Array.isArray(data.people)) throw new Error("OpenPose JSON needs a 'people' list.");
      sx = data.canvas_width ?? 1;
      sy = data.canvas_height ?? 1;
      finite([sx, sy]);
      if (sx <= 0 || sy <= 0) throw new Error("canvas_width and canvas_height must be positive.");
      list = data.people.map((person) => {
        const flat = person && person.pose_keypoints_2d;
        if (!Array.isArray(flat) || flat.length !== 54) {
          throw new Error("Each OpenPose person needs 'pose_keypoints_2d' with 54 numbers (18 x, y, confidence).");
        }
        return Array.from({ length: 18 }, (_, k) => flat.slice(3 * k, 3 * k + 3));
      });
    } else if (Array.isArray(data) && Array.isArray(data[0]) && Array.isArray(data[0][0])) {
      list = data;
    } else if (Array.isArray(data)) {
      list = [data];
    } else {
      throw new Error("Pose JSON must be a list of 18 keypoints, a list of people, or OpenPose JSON with 'people'.");
    }
    return list.map((person) => {
      if (!Array.isArray(person) || person.length !== 18 ||
          !person.every((k) => Array.isArray(k) && (k.length === 2 || k.length === 3))) {
        throw new Error("A person needs 18 keypoints of [x, y] or [x, y, visible].");
      }
      return person.map((k) => {
        finite(k);
        const point = [k[0] / sx, k[1] / sy, k.length === 2 || k[2] > 0 ? 1 : 0];
        if (point[2] && (point[0] < 0 || point[0] > 1 || point[1] < 0 || point[1] > 1)) {
          throw new Error("Every shown keypoint must lie on the canvas.");
        }
        return point;
      });
    });
  }

  // The value Python sends: its canvas size becomes the editor's.
  function load(text) {
    if (typeof text !== "string" || !text) return;
    let data;
    try {
      data = JSON.parse(text);
    } catch (err) {
      return say("The pose is not valid JSON.", true);
    }
    try {
      const list = normalised(data);
      if (!Array.isArray(data)) {
        W = data.canvas_width > 1 ? data.canvas_width : W;
        H = data.canvas_height > 1 ? data.canvas_height : H;
      }
      const next = list.map((p) => p.map(([x, y, c]) => [x * W, y * H, c]));
      if (people.length && JSON.stringify(next) !== JSON.stringify(people)) remember();
      people = next;
      selected = Math.min(selected, Math.max(0, people.length - 1));
      render();
      summary();
    } catch (err) {
      say(err.message, true);
    }
  }

  function commit() {
    written = serialize();
    props.value = written;  // Gradio dispatches "change" with this value
    summary();
  }

  function remember() {
    history.push(JSON.stringify({ people, selected }));
    if (history.length > UNDO_DEPTH) history.shift();
  }

  function undo() {
    const last = history.pop();
    if (!last) return say("Nothing to undo.");
    ({ people, selected } = JSON.parse(last));
    render();
    commit();
  }

  function node(tag, attrs, parent) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    parent.appendChild(el);
    return el;
  }

  function render() {
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.style.aspectRatio = `${W} / ${H}`;
    svg.classList.toggle("pe-hiding", hiding);
    svg.replaceChildren();
    node("rect", { x: 0, y: 0, width: W, height: H, fill: "#000" }, svg);
    people.forEach((p) => {
      LIMBS.forEach(([a, b], i) => {
        if (!p[a][2] || !p[b][2]) return;  // a limb with a hidden end is not drawn, as in controlnet_aux
        const [x1, y1] = p[a], [x2, y2] = p[b];
        const length = Math.hypot(x2 - x1, y2 - y1);
        const angle = (Math.atan2(y2 - y1, x2 - x1) * 180) / Math.PI;
        const cx = (x1 + x2) / 2, cy = (y1 + y2) / 2;
        node("ellipse", { cx, cy, rx: length / 2, ry: STICK, fill: rgb(COLOURS[i], 0.6),
          transform: `rotate(${angle} ${cx} ${cy})` }, svg);
      });
    });
    people.forEach((p, n) => {
      p.forEach(([x, y, c], k) => {
        const picked = n === selected;
        node("circle", c ? { cx: x, cy: y, r: JOINT, fill: rgb(COLOURS[k]), stroke: picked ? "#fff" : "none",
          "stroke-width": 1.2 } : { cx: x, cy: y, r: JOINT + 1, fill: "none", stroke: "#888",
          "stroke-width": 1.5, "stroke-dasharray": "2 2" }, svg);
      });
    });
    people.forEach((p, n) => {  // hit areas last, so that a joint is grabbed rather than a limb
      p.forEach(([x, y, c], k) => {
        const hit = node("circle", { cx: x, cy: y, r: HIT, class: "pe-hit", "data-person": n, "data-joint": k }, svg);
        node("title", {}, hit).textContent = `person ${n + 1}, ${NAMES[k]}${c ? "" : " (hidden)"}`;
      });
    });
  }

  function toCanvas(event) {
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse());
    return [clampX(p.x), clampY(p.y)];
  }

  function jointOf(event) {
    const t = event.target.closest && event.target.closest(".pe-hit");
    return t ? [Number(t.dataset.person), Number(t.dataset.joint)] : null;
  }

  function toggle(n, k) {
    remember();
    people[n][k][2] = people[n][k][2] ? 0 : 1;
    render();
    commit();
  }

  svg.addEventListener("pointerdown", (event) => {
    const hit = jointOf(event);
    if (!hit || event.button !== 0) return;
    event.preventDefault();
    const [n, k] = hit;
    selected = n;
    if (hiding) return toggle(n, k);
    const [x, y] = toCanvas(event);
    drag = { n, k, dx: people[n][k][0] - x, dy: people[n][k][1] - y, moved: false, id: event.pointerId };
    svg.setPointerCapture(event.pointerId);
    svg.classList.add("pe-dragging");
    render();
    summary();
  });

  svg.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const [x, y] = toCanvas(event);
    const nx = clampX(x + drag.dx), ny = clampY(y + drag.dy);
    const joint = people[drag.n][drag.k];
    if (nx === joint[0] && ny === joint[1]) return;
    if (!drag.moved) remember();
    drag.moved = true;
    joint[0] = nx;
    joint[1] = ny;
    render();  // limbs follow the joint while it moves
  });

  function release(event) {
    if (!drag || event.pointerId !== drag.id) return;
    const moved = drag.moved;
    drag = null;
    svg.classList.remove("pe-dragging");
    if (svg.hasPointerCapture(event.pointerId)) svg.releasePointerCapture(event.pointerId);
    if (moved) commit();  // the control map is redrawn once, on release
  }
  svg.addEventListener("pointerup", release);
  svg.addEventListener("pointercancel", release);

  svg.addEventListener("contextmenu", (event) => {
    const hit = jointOf(event);
    if (!hit) return;
    event.preventDefault();
    selected = hit[0];
    toggle(...hit);
  });

  function shifted(person, dx) {
    const xs = person.map((k) => k[0]);
    const step = Math.max(-Math.min(...xs), Math.min(W - Math.max(...xs), dx));
    return person.map(([x, y, c]) => [x + step, y, c]);
  }

  function place(preset, n) {
    const shift = [0, 0.3, -0.3][n % 3] * W;  // side by side, at 0.6 of the preset's size
    return preset.map(([x, y]) => [clampX((0.5 + (x - 0.5) * 0.6) * W + shift),
      clampY((0.5 + (y - 0.5) * 0.6) * H), 1]);
  }

  const actions = {
    add() {
      if (people.length >= maxPeople) return say(`The editor takes at most ${maxPeople} people.`, true);
      const presets = props.presets || {};
      const preset = presets.standing || Object.values(presets)[0];
      if (!preset) return;
      remember();
      people.push(place(preset, people.length));
      selected = people.length - 1;
      render();
      commit();
    },
    duplicate() {
      if (!people.length) return;
      if (people.length >= maxPeople) return say(`The editor takes at most ${maxPeople} people.`, true);
      remember();
      const copy = people[selected].map((k) => k.slice());
      const xs = copy.map((k) => k[0]);
      people.push(shifted(copy, Math.max(...xs) + 0.1 * W <= W ? 0.1 * W : -0.1 * W));
      selected = people.length - 1;
      render();
      commit();
    },
    remove() {
      if (people.length <= 1) return say("A pose keeps at least one person; hide joints to leave them out.", true);
      remember();
      people.splice(selected, 1);
      selected = Math.max(0, selected - 1);
      render();
      commit();
    },
    hide() {
      hiding = !hiding;
      hideButton.setAttribute("aria-pressed", String(hiding));
      svg.classList.toggle("pe-hiding", hiding);
    },
    undo,
    import() {
      fileInput.click();
    },
    export() {
      const url = URL.createObjectURL(new Blob([serialize()], { type: "application/json" }));
      const link = document.createElement("a");
      link.href = url;
      link.download = "pose.json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    },
  };

  root.querySelector(".pe-bar").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-act]");
    if (button) actions[button.dataset.act]();
  });

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file) return;
    try {
      if (file.size > 100000) throw new Error("The file is over 100 kB; an OpenPose pose takes a few kB.");
      let data;
      try {
        data = JSON.parse(await file.text());
      } catch (err) {
        throw new Error("The file is not valid JSON.");
      }
      const list = normalised(data);
      if (!list.length || list.length > maxPeople) throw new Error(`The file must hold 1 to ${maxPeople} people.`);
      remember();
      people = list.map((p) => p.map(([x, y, c]) => [x * W, y * H, c]));
      selected = 0;
      render();
      commit();
    } catch (err) {
      say(err.message, true);
    }
  });

  root.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    }
  });

  watch("value", () => {
    if (props.value !== written) load(props.value);
  });
  load(props.value);
})();
