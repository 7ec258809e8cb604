// The console page: noVNC's RFB client over the server's console websocket.
//
// Each connection (and each reconnection) starts with a one-time ticket from
// POST /machines/<name>/console/ticket (the session's CSRF token in a header); the ticket goes with
// the websocket's handshake and is spent when the server accepts it. The page makes the WebSocket
// itself and hands it to RFB, so that it can read the close code and reason the server sends
// (kubekvm/console.py: 4409 the machine is off, 4408 idle, 4503 host unreachable, ...) and say
// why the console ended instead of just "disconnected".
import RFB from './vendor/novnc/core/rfb.js';
import KeyTable from './vendor/novnc/core/input/keysym.js';
import keysyms from './vendor/novnc/core/input/keysymdef.js';

const page = document.body;
const machine = page.dataset.machine;
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const screen = document.getElementById('console-screen');
const status = document.getElementById('console-status');
const message = document.getElementById('console-message');
const messageText = document.getElementById('console-message-text');
const startButton = document.getElementById('console-start');
const messageReconnect = document.getElementById('console-message-reconnect');
const cadButton = document.getElementById('console-cad');
const scaleButton = document.getElementById('console-scale');
const typeButton = document.getElementById('console-type');
const clipboardButton = document.getElementById('console-clipboard');
const pasteText = document.getElementById('console-paste-text');
const connectedOnly = [cadButton, typeButton, clipboardButton];

const WAIT_FOR_START_MS = 3 * 60 * 1000;
const POLL_MS = 2000;

let rfb = null;
let scale = true;
let attempt = 0;  // a newer connect() makes older ones stop what they were doing
let waitingSince = null;

// Tests (and the curious, in the developer tools) reach the live client here.
window.kubekvmConsole = { get rfb() { return rfb; } };

function setStatus(text, state) {
    status.textContent = text;
    page.dataset.state = state;
}

function showMessage(text, { start = false, reconnect = false } = {}) {
    messageText.textContent = text;
    startButton.hidden = !start;
    messageReconnect.hidden = !reconnect;
    message.hidden = false;
    (start ? startButton : reconnect ? messageReconnect : messageText).focus?.();
}

function hideMessage() {
    message.hidden = true;
}

function setConnected(connected) {
    for (const button of connectedOnly) {
        button.disabled = !connected;
    }
}

async function requestTicket() {
    let response;
    try {
        response = await fetch(page.dataset.ticketUrl, {
            method: 'POST', credentials: 'same-origin',
            headers: { 'X-CSRF-Token': csrf, 'Accept': 'application/json' },
        });
    } catch {
        throw { code: 'NETWORK', message: 'The server cannot be reached. Check the network, then reconnect.' };
    }
    if (!(response.headers.get('content-type') || '').includes('application/json')) {
        throw { code: 'UNAUTHENTICATED', message: 'Your session has ended: sign in again, then reconnect.' };
    }
    const body = await response.json();
    if (!response.ok) {
        throw body.error;
    }
    return body;
}

function dropClient() {
    const old = rfb;
    rfb = null;  // its disconnect event is then ignored
    setConnected(false);
    if (old) {
        old.disconnect();
    }
}

async function connect() {
    const mine = ++attempt;
    dropClient();
    setStatus(waitingSince ? 'Starting…' : 'Connecting…', 'connecting');
    let ticket;
    try {
        ticket = await requestTicket();
    } catch (error) {
        if (mine === attempt) {
            refused(error);
        }
        return;
    }
    if (mine !== attempt) {
        return;
    }
    waitingSince = null;
    hideMessage();
    const url = new URL(ticket.socket, window.location.href);
    url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    // The ticket rides as a subprotocol (kept out of access logs); the server picks "binary".
    const socket = new WebSocket(url.href, ['binary', ticket.protocol]);
    let closed = null;
    // Added before RFB's own handler, so it has run when RFB reports the disconnect.
    socket.addEventListener('close', (event) => { closed = event; });
    const client = new RFB(screen, socket, { shared: true });
    client.scaleViewport = scale;
    client.clipViewport = false;
    client.resizeSession = false;
    client.background = '#111827';
    client.addEventListener('connect', () => {
        if (rfb !== client) { return; }
        setStatus('Connected', 'connected');
        setConnected(true);
        client.focus();
    });
    client.addEventListener('disconnect', () => {
        if (rfb !== client) { return; }
        rfb = null;
        setConnected(false);
        ended(closed);
    });
    client.addEventListener('credentialsrequired', () => {
        // KubeKVM's displays have no password: this is not one of them.
        dropClient();
        setStatus('Refused', 'refused');
        showMessage('The machine\'s display asks for a password, which KubeKVM does not have.', { reconnect: true });
    });
    client.addEventListener('securityfailure', (event) => {
        setStatus('Refused', 'refused');
        showMessage(`The machine's display refused the console: ${event.detail.reason || 'no reason given'}.`,
                    { reconnect: true });
    });
    rfb = client;
}

// A ticket was refused: say why, and offer what can be done.
function refused(error) {
    const text = (error && error.message) || 'The console could not be opened.';
    switch (error && error.code) {
    case 'MACHINE_OFF':
        if (error.desired !== 'running') {
            waitingSince = null;
            setStatus('Machine off', 'off');
            showMessage(text, { start: true });
        } else if (waitingSince === null || Date.now() - waitingSince < WAIT_FOR_START_MS) {
            // Starting: ask again until it runs.
            waitingSince = waitingSince ?? Date.now();
            setStatus('Starting…', 'connecting');
            showMessage('The machine is starting; the console connects as soon as it runs.');
            setTimeout(() => { if (waitingSince !== null) { connect(); } }, POLL_MS);
        } else {
            waitingSince = null;
            setStatus('Not running', 'off');
            showMessage(`${text} It has not started in three minutes.`, { reconnect: true });
        }
        break;
    case 'HOST_UNREACHABLE':
        setStatus('Host unreachable', 'unreachable');
        showMessage(text, { reconnect: true });
        break;
    case 'FORBIDDEN':
    case 'NOT_FOUND':
        setStatus('Not allowed', 'refused');
        showMessage(text);
        break;
    default:
        setStatus('Not connected', 'refused');
        showMessage(text, { reconnect: true });
    }
}

// The websocket closed: the server's code says why.
function ended(event) {
    const code = event ? event.code : 1006;
    const reason = event && event.reason;
    switch (code) {
    case 4409:
        setStatus('Machine off', 'off');
        showMessage(reason || 'The machine is off.', { start: true });
        break;
    case 4408:
        setStatus('Closed (idle)', 'closed');
        showMessage(reason, { reconnect: true });
        break;
    case 4403:
    case 4404:
        setStatus('Not allowed', 'refused');
        showMessage(reason);
        break;
    case 4503:
        setStatus('Host unreachable', 'unreachable');
        showMessage(reason, { reconnect: true });
        break;
    case 4401:
    case 4429:
    case 4500:
        setStatus('Not connected', 'refused');
        showMessage(reason, { reconnect: true });
        break;
    default:
        setStatus('Disconnected', 'closed');
        showMessage(reason || 'The connection to the server closed. Reconnect to go on.', { reconnect: true });
    }
}

async function startMachine() {
    startButton.disabled = true;
    try {
        // As htmx would send it: the answer is a fragment, not a redirect with a flash cookie.
        const response = await fetch(page.dataset.startUrl, {
            method: 'POST', credentials: 'same-origin',
            headers: { 'X-CSRF-Token': csrf, 'HX-Request': 'true' },
            body: new URLSearchParams({ next: window.location.pathname }),
        });
        if (!response.ok) {
            showMessage(`The machine could not be started (HTTP ${response.status}); reload the page.`,
                        { reconnect: true });
            return;
        }
    } finally {
        startButton.disabled = false;
    }
    waitingSince = Date.now();
    setStatus('Starting…', 'connecting');
    showMessage('The machine is starting; the console connects as soon as it runs.');
    setTimeout(() => { if (waitingSince !== null) { connect(); } }, POLL_MS);
}

// ----------------------------------------------------------------- the toolbar

// Characters a US keyboard types with Shift (the guest's layout decides what a key means).
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ');
const SPECIAL = { '\n': KeyTable.XK_Return, '\r': null, '\t': KeyTable.XK_Tab };

function typeText(text) {
    if (!rfb) { return; }
    for (const character of text) {
        const keysym = character in SPECIAL ? SPECIAL[character] : keysyms.lookup(character.codePointAt(0));
        if (keysym === null) { continue; }
        const shift = SHIFTED.has(character);
        if (shift) { rfb.sendKey(KeyTable.XK_Shift_L, 'ShiftLeft', true); }
        rfb.sendKey(keysym, null);
        if (shift) { rfb.sendKey(KeyTable.XK_Shift_L, 'ShiftLeft', false); }
    }
}

cadButton.addEventListener('click', () => { if (rfb) { rfb.sendCtrlAltDel(); rfb.focus(); } });
scaleButton.addEventListener('click', () => {
    scale = !scale;
    scaleButton.setAttribute('aria-pressed', String(scale));
    page.dataset.scale = scale ? 'on' : 'off';
    if (rfb) { rfb.scaleViewport = scale; }
});
typeButton.addEventListener('click', () => {
    typeText(pasteText.value);
    document.getElementById('console-paste').open = false;
    if (rfb) { rfb.focus(); }
});
clipboardButton.addEventListener('click', () => {
    if (rfb) { rfb.clipboardPasteFrom(pasteText.value); rfb.focus(); }
    document.getElementById('console-paste').open = false;
});
for (const button of [document.getElementById('console-reconnect'), messageReconnect]) {
    button.addEventListener('click', () => { waitingSince = null; connect(); });
}
startButton.addEventListener('click', startMachine);
window.addEventListener('beforeunload', dropClient);

connect();
