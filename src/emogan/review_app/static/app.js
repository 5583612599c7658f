"use strict";

// The review page: the crops of one emotion folder in a grid, in the suspect order (the crops
// the crop judge doubts first, each with its guess as a hint) or the confidence order (MTCNN's
// least certain first). Keys decide; each decision is sent at once and its tile shows only what
// the server answered, so what you see is what the decisions file holds. A hint is only shown:
// accepting it is a relabel like any other.

const REFRESH_MS = 10000;
const VERDICTS = { keep: "kept", drop: "dropped" };
const SYNC_BADGES = { saving: "saving…", failed: "NOT SAVED" };

const byId = (id) => document.getElementById(id);
const ui = {
  progress: byId("progress"),
  where: byId("where"),
  status: byId("status"),
  tabs: byId("tabs"),
  legend: byId("legend"),
  grids: byId("grids"),
  empty: byId("empty"),
  filter: byId("unreviewed-only"),
  order: byId("order"),
  orderNote: byId("order-note"),
  overlay: byId("overlay"),
  photo: byId("photo"),
  caption: byId("photo-caption"),
};

const page = {
  emotions: [],
  crops: new Map(), // crop id -> the crop as the server last described it
  tiles: new Map(), // crop id -> its tile
  grids: new Map(), // emotion -> its grid
  tabs: new Map(), // emotion -> its tab
  orders: {}, // order name -> crop ids in that order, or null where the server has none
  emotion: null, // the open folder
  selected: new Map(), // emotion -> the crop id selected in that folder
  undoable: [], // [{id, previous}] for each saved decision, newest last
  loading: false, // the first state is on its way
  pending: 0, // requests sent and not answered yet
  saves: 0, // answers applied; a state fetched across one of them is older than the page
  queue: Promise.resolve(), // requests go one at a time, so they land in key-press order
  problem: "", // the last failure to reach or to satisfy the server
};

const COMMANDS = {
  k: () => decide("keep"),
  " ": () => decide("keep"),
  x: () => decide("drop"),
  a: acceptHint,
  u: undo,
  p: togglePhoto,
  Enter: togglePhoto,
  Escape: closePhoto,
  ArrowLeft: () => move(-1),
  ArrowRight: () => move(1),
  ArrowUp: () => move(-columns()),
  ArrowDown: () => move(columns()),
  "[": () => openFolderBy(-1),
  "]": () => openFolderBy(1),
  f: toggleFilter,
};

function commandFor(key) {
  const digit = Number(key);
  if (Number.isInteger(digit) && digit >= 1 && digit <= page.emotions.length) {
    return () => decide("relabel", page.emotions[digit - 1]);
  }
  return COMMANDS[key.length === 1 ? key.toLowerCase() : key] ?? null;
}

// ---- talking to the server

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...options });
  } catch {
    throw new Error("the review server does not answer");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error ?? `HTTP ${response.status}`);
  return answer;
}

function post(url, body) {
  return request(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

function send(url, body, id) {
  page.pending += 1;
  setSync(id, "saving");
  const saved = page.queue
    .then(() => post(url, body))
    .then(
      (answer) => {
        page.saves += 1;
        page.problem = "";
        setSync(id, "");
        applyCrop(answer.crop);
        applyProgress(answer.progress);
        return true;
      },
      (error) => {
        page.problem = `${id}: ${error.message}`;
        setSync(id, "failed");
        return false;
      },
    )
    .finally(() => {
      page.pending -= 1;
      applyFilter();
      renderStatus();
    });
  page.queue = saved;
  return saved;
}

async function refresh() {
  if (!page.emotions.length) return load();
  if (page.pending) return;
  const saves = page.saves;
  try {
    const state = await request("/api/state");
    if (page.pending || saves !== page.saves) return; // a save landed meanwhile: this is older
    state.crops.forEach(applyCrop);
    applyProgress(state.progress);
    applyFilter();
    page.problem = "";
  } catch (error) {
    page.problem = error.message;
  }
  renderStatus();
}

async function load() {
  if (page.loading) return; // the first load and a focus event can overlap
  page.loading = true;
  try {
    build(await request("/api/state"));
    page.problem = "";
  } catch (error) {
    page.problem = `cannot load the crops: ${error.message}`;
  } finally {
    page.loading = false;
    renderStatus();
  }
}

// ---- building the page

function build(state) {
  page.emotions = state.emotions;
  page.orders = state.orders;
  const policy = state.unreviewed_policy === "drop" ? "dropped" : "kept";
  ui.where.textContent =
    `decisions: ${state.decisions_path} · reviewer: ${state.reviewer}` +
    ` · unreviewed crops are ${policy}`;
  buildFolders(state.crops);
  buildOrders(state.suspect_unavailable);
  buildLegend();
  applyProgress(state.progress);
  const asked = decodeURIComponent(location.hash.slice(1));
  openFolder(page.emotions.includes(asked) ? asked : firstFolderToReview(state.progress));
}

function element(tag, className, text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = text;
  return node;
}

function buildFolders(crops) {
  for (const emotion of page.emotions) {
    const tab = element("button", "tab", emotion);
    tab.setAttribute("role", "tab");
    tab.append(element("span", "count"));
    tab.addEventListener("click", () => openFolder(emotion));
    const grid = element("div", "grid");
    grid.setAttribute("role", "listbox");
    grid.setAttribute("aria-label", `crops from the ${emotion} folder`);
    grid.hidden = true;
    page.tabs.set(emotion, tab);
    page.grids.set(emotion, grid);
    ui.tabs.append(tab);
    ui.grids.append(grid);
  }
  for (const crop of crops) {
    const tile = makeTile(crop);
    page.tiles.set(crop.id, tile);
    page.grids.get(crop.emotion).append(tile);
    applyCrop(crop);
  }
}

function makeTile(crop) {
  const tile = element("div", "tile");
  tile.setAttribute("role", "option");
  tile.dataset.cropId = crop.id;
  const image = element("img");
  image.src = `/crop/${encodeURIComponent(crop.id)}`;
  image.loading = "lazy";
  image.alt = crop.id;
  tile.append(
    image,
    element("span", "prob", crop.prob.toFixed(3)),
    element("span", "verdict"),
    element("span", "hint", hintOf(crop)),
    element("span", "sync"),
  );
  tile.addEventListener("click", () => select(crop.id));
  tile.addEventListener("dblclick", showPhoto);
  return tile;
}

// The first order the server has is the default: suspect, when the judge's scores match.
function buildOrders(suspectUnavailable) {
  for (const [name, ids] of Object.entries(page.orders)) {
    const option = element("option", "", name);
    option.value = name;
    option.disabled = !ids;
    ui.order.append(option);
  }
  ui.order.value = Object.keys(page.orders).find((name) => page.orders[name]);
  ui.orderNote.hidden = !suspectUnavailable;
  ui.orderNote.textContent = `no suspect order: ${suspectUnavailable}`;
  applyOrder();
}

function applyOrder() {
  for (const id of page.orders[ui.order.value]) {
    const tile = page.tiles.get(id);
    tile.parentElement.append(tile); // moves it to its grid's end
  }
}

function buildLegend() {
  const hints = [...page.crops.values()].some((crop) => crop.hint);
  const entries = [
    ...page.emotions.map((emotion, i) => [String(i + 1), emotion, String(i + 1)]),
    ["k / space", "keep", "k"],
    ["x", "drop", "x"],
    ...(hints ? [["a", "accept hint", "a"]] : []),
    ["u", "undo", "u"],
    ["p / enter", "photo", "p"],
    ["f", "filter", "f"],
    ["[ ]", "folder", null],
    ["← → ↑ ↓", "move", null],
  ];
  for (const [keys, does, key] of entries) {
    const entry = element(key ? "button" : "span", "key");
    entry.append(element("kbd", "", keys), ` ${does}`);
    if (key) entry.addEventListener("click", () => commandFor(key)());
    ui.legend.append(entry);
  }
}

// ---- showing the server's answers

function hintOf(crop) {
  return crop.hint ? `judge: ${crop.hint.emotion} ${crop.hint.prob.toFixed(2)}` : "";
}

function verdictOf(crop) {
  const decision = crop.decision;
  if (!decision) return "unreviewed";
  return decision.action === "relabel" ? `→ ${decision.label}` : VERDICTS[decision.action];
}

function applyCrop(crop) {
  const tile = page.tiles.get(crop.id);
  if (!tile) return;
  page.crops.set(crop.id, crop);
  tile.dataset.state = crop.decision?.action ?? "unreviewed";
  tile.querySelector(".verdict").textContent = verdictOf(crop);
  const by = crop.decision ? `${crop.decision.reviewer}, ${crop.decision.decided_at}` : "";
  const about = [crop.id, `prob ${crop.prob}`, hintOf(crop), `${verdictOf(crop)} ${by}`.trim()];
  tile.title = about.filter(Boolean).join(" · ");
}

function setSync(id, sync) {
  const tile = page.tiles.get(id);
  tile.dataset.sync = sync;
  tile.querySelector(".sync").textContent = SYNC_BADGES[sync] ?? "";
}

function applyProgress(progress) {
  ui.progress.textContent = `reviewed ${progress.reviewed} / ${progress.total}`;
  for (const [emotion, counts] of Object.entries(progress.by_emotion)) {
    const tab = page.tabs.get(emotion);
    tab.querySelector(".count").textContent = `${counts.reviewed}/${counts.total}`;
    tab.classList.toggle("done", counts.reviewed === counts.total);
  }
}

function renderStatus() {
  const unsaved = document.querySelectorAll('.tile[data-sync="failed"]').length;
  const parts = [];
  if (unsaved) parts.push(`${unsaved} decision(s) NOT saved: select and decide again`);
  if (page.problem) parts.push(page.problem);
  ui.status.textContent = parts.join(" · ");
  ui.status.hidden = !parts.length;
}

// In "unreviewed only", decided tiles hide, except the selected one (it would vanish under the
// cursor) and those whose save failed (they need a second try).
function isShown(tile) {
  return (
    !ui.filter.checked ||
    !page.crops.get(tile.dataset.cropId).decision ||
    tile.dataset.cropId === selectedId() ||
    tile.dataset.sync === "failed"
  );
}

function applyFilter() {
  for (const tile of page.tiles.values()) tile.hidden = !isShown(tile);
  const grid = page.grids.get(page.emotion);
  if (!grid) return;
  ui.empty.hidden = visibleTiles().length > 0;
  ui.empty.textContent = grid.children.length ? "all reviewed here" : "no crops in this folder";
}

// ---- selection, folders and the photo

function selectedId() {
  return page.selected.get(page.emotion) ?? null;
}

function visibleTiles() {
  return [...page.grids.get(page.emotion).children].filter((tile) => !tile.hidden);
}

function select(id) {
  for (const before of document.querySelectorAll(".tile.selected")) {
    before.classList.remove("selected");
    before.setAttribute("aria-selected", "false");
  }
  page.selected.set(page.emotion, id);
  applyFilter();
  const tile = page.tiles.get(id);
  if (!tile) return;
  tile.classList.add("selected");
  tile.setAttribute("aria-selected", "true");
  tile.scrollIntoView({ block: "nearest" });
  if (!ui.overlay.hidden) showPhoto();
}

function move(step) {
  const tiles = visibleTiles();
  const here = tiles.findIndex((tile) => tile.dataset.cropId === selectedId());
  const target = here < 0 ? tiles[0] : tiles[here + step];
  if (target) select(target.dataset.cropId);
}

function columns() {
  return getComputedStyle(page.grids.get(page.emotion)).gridTemplateColumns.split(" ").length;
}

function firstFolderToReview(progress) {
  const unfinished = (emotion) => {
    const counts = progress.by_emotion[emotion];
    return counts.reviewed < counts.total;
  };
  return page.emotions.find(unfinished) ?? page.emotions[0];
}

function openFolder(emotion) {
  page.emotion = emotion;
  for (const [name, grid] of page.grids) grid.hidden = name !== emotion;
  for (const [name, tab] of page.tabs) tab.setAttribute("aria-selected", String(name === emotion));
  history.replaceState(null, "", `#${encodeURIComponent(emotion)}`);
  applyFilter();
  const tiles = visibleTiles();
  const unreviewed = tiles.find((tile) => !page.crops.get(tile.dataset.cropId).decision);
  select(selectedId() ?? (unreviewed ?? tiles[0])?.dataset.cropId ?? null);
}

function openFolderBy(step) {
  const count = page.emotions.length;
  openFolder(page.emotions[(page.emotions.indexOf(page.emotion) + step + count) % count]);
}

function toggleFilter() {
  ui.filter.checked = !ui.filter.checked;
  applyFilter();
}

function showPhoto() {
  const crop = page.crops.get(selectedId());
  if (!crop) return;
  ui.photo.src = `/photo/${encodeURIComponent(crop.id)}`;
  ui.caption.textContent =
    [crop.source, `folder ${crop.emotion}`, `prob ${crop.prob.toFixed(3)}`, hintOf(crop)]
      .filter(Boolean)
      .join(" · ") + ` · ${verdictOf(crop)} · decide here, Esc closes`;
  ui.overlay.hidden = false;
}

function closePhoto() {
  ui.overlay.hidden = true;
}

function togglePhoto() {
  if (ui.overlay.hidden) showPhoto();
  else closePhoto();
}

// ---- decisions

function decide(action, label = "") {
  const id = selectedId();
  if (!id) return;
  // Undoable at once: an undo pressed before the answer queues behind the decision it reverts.
  page.undoable.push({ id, previous: page.crops.get(id).decision });
  move(1);
  send("/api/decision", { crop_id: id, action, label }, id);
}

// The judge's guess becomes a relabel like one typed with its digit (the server records a
// relabel to the folder's own emotion as a keep).
function acceptHint() {
  const hint = page.crops.get(selectedId())?.hint;
  if (hint) decide("relabel", hint.emotion);
}

function undo() {
  const last = page.undoable.pop();
  if (!last) return;
  openFolder(page.crops.get(last.id).emotion);
  select(last.id);
  send("/api/undo", { crop_id: last.id, previous: last.previous }, last.id).then((saved) => {
    if (!saved) page.undoable.push(last);
  });
}

// ---- wiring

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return; // the browser's own shortcuts
  const command = commandFor(event.key);
  if (!command) return;
  event.preventDefault();
  if (event.repeat && !event.key.startsWith("Arrow")) return; // a held key decides once
  command();
});

// A clicked button or checkbox would keep the focus, and space or Enter would click it again.
document.addEventListener("click", (event) => event.target.closest("button, input")?.blur());
ui.filter.addEventListener("change", applyFilter);
ui.order.addEventListener("change", () => {
  ui.order.blur(); // the keys are for the crops again
  applyOrder();
  applyFilter();
});
ui.overlay.addEventListener("click", closePhoto);
ui.photo.addEventListener("error", () => {
  ui.caption.textContent = "the source photo could not be loaded";
});
window.addEventListener("focus", refresh);
document.addEventListener("visibilitychange", () => document.hidden || refresh());
setInterval(refresh, REFRESH_MS);
load();
