// The room page's client: one WebSocket that reconnects by itself and loses nothing.
//
// - Messages are shown as text (the log is a <textarea>; .value, never innerHTML).
// - Every send carries a random client_id and stays in `pending` until the server echoes
//   it back, so a send is retried after a reconnect and the server stores it once.
// - After a drop it reconnects with exponential backoff and jitter, asking for every
//   message after the last id it has (`?after=`); ids it has already shown are skipped.
//   The server sends a catch-up a page at a time: the page asks for each next one.
// - The backoff starts over only once a connection has stayed up for a while: a socket
//   that opens and drops at once (a frame the server cannot take) slows down, not loops.
// - A message over the server's limits (json_script "chat-limits") is never sent: it stays
//   in the input, with the reason beside it.
// - Each message stays on one line of the log: line breaks in it are shown as " ↵ ".
(function () {
    'use strict';

    const BACKOFF_FIRST_MS = 500;
    const BACKOFF_MAX_MS = 15000;
    const RATE_LIMITED_RETRY_MS = 1000;
    // A connection that stayed up this long was not dropped for something it sent.
    const HEALTHY_AFTER_MS = 5000;
    // What Python's str.strip() removes (str.isspace), so the page counts as the server does.
    const SPACE = '[\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+';
    const SERVER_TRIM = new RegExp('^' + SPACE + '|' + SPACE + '$', 'g');
    // Everything a textarea, or a reader of its text, may take for the end of a line.
    const LINE_BREAKS = /\r\n|[\n\v\f\r\x1c-\x1e\x85\u2028\u2029]/g;

    const roomName = JSON.parse(document.getElementById('room-name').textContent);
    const limits = JSON.parse(document.getElementById('chat-limits').textContent);
    const scheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
    const baseUrl = scheme + window.location.host + '/ws/chat/' + encodeURIComponent(roomName) + '/';

    const chatLog = document.querySelector('#chat-log');
    const statusLine = document.querySelector('#connection-status');
    const errorLine = document.querySelector('#chat-error');
    const presenceLine = document.querySelector('#presence');
    const outboxStatus = document.querySelector('#outbox-status');
    const messageInput = document.querySelector('#chat-message-input');
    const submitButton = document.querySelector('#chat-message-submit');

    let socket = null;
    let lastId = null;          // id of the newest message shown; null until the first one
    let failedAttempts = 0;
    let healthyTimer = null;
    let connections = 0;
    const pending = new Map();  // client_id -> frame, in the order they were typed

    // --- Page events (a stand-in until the rich view's room.js lands: same contract) ---
    function emit(name, detail) {
        document.dispatchEvent(new CustomEvent(name, {detail: detail}));
    }
    // --- end of page events ---

    function showStatus(text, kind) {
        statusLine.textContent = text;
        statusLine.className = 'notice ' + kind;
    }

    function showOutbox() {
        outboxStatus.textContent = pending.size === 0 ? '' :
            pending.size + (pending.size === 1 ? ' message' : ' messages') + ' waiting to be sent';
    }

    function oneLine(text) {
        return String(text).replace(LINE_BREAKS, ' ↵ ');
    }

    function appendToLog(data) {
        const who = data.user === undefined ? '' : data.user + (data.guest ? ' (guest)' : '') + ': ';
        chatLog.value += oneLine(who + data.message) + '\n';
        chatLog.scrollTop = chatLog.scrollHeight;
    }

    function newClientId() {
        const bytes = new Uint8Array(16);
        window.crypto.getRandomValues(bytes);
        return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    }

    function sendPending(clientId) {
        if (socket !== null && socket.readyState === WebSocket.OPEN && pending.has(clientId)) {
            socket.send(pending.get(clientId));
        }
    }

    function onMessage(data) {
        if (data.error) {
            onError(data.error);
        } else if (data.catch_up) {
            if (data.catch_up.more) {  // the server waits for this before the next page
                socket.send(JSON.stringify({'catch_up': {'after': data.catch_up.next_after}}));
            }
        } else if (data.presence) {
            const p = data.presence;
            presenceLine.textContent = p.count + ' online: ' + p.names.join(', ');
            emit('chat:presence', data.presence);  // page events
        } else if (data.message !== undefined) {
            if (data.client_id) {
                pending.delete(data.client_id);
                showOutbox();
            }
            if (lastId !== null && data.id !== undefined && data.id <= lastId) {
                return;  // already shown: a catch-up overlap or a retried send's echo
            }
            if (data.id !== undefined) {
                lastId = data.id;
            }
            appendToLog(data);
            emit('chat:message', {data: data, element: null, history: Boolean(data.history)});  // page events
        } else {
            emit('chat:frame', data);  // page events
        }
    }

    function onError(error) {
        errorLine.textContent = error.detail + ' (' + error.code + ')';
        if (!error.client_id) {
            return;
        }
        if (error.code === 'rate_limited' || error.code === 'store_failed') {
            setTimeout(() => sendPending(error.client_id), RATE_LIMITED_RETRY_MS);
        } else {
            pending.delete(error.client_id);
            showOutbox();
        }
    }

    function connect() {
        const url = lastId === null ? baseUrl : baseUrl + '?after=' + lastId;
        connections += 1;
        socket = new WebSocket(url);
        socket.onopen = function () {
            healthyTimer = setTimeout(() => { failedAttempts = 0; }, HEALTHY_AFTER_MS);
            errorLine.textContent = '';
            showStatus('Connected', 'ok');
            emit('chat:connection', {state: 'open'});  // page events
            for (const clientId of pending.keys()) {
                sendPending(clientId);
            }
        };
        socket.onmessage = (e) => onMessage(JSON.parse(e.data));
        socket.onclose = function (e) {
            clearTimeout(healthyTimer);
            const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failedAttempts);
            const delay = ceiling / 2 + Math.random() * ceiling / 2;
            failedAttempts += 1;
            emit('chat:connection', {state: 'closed'});  // page events
            showStatus('Disconnected (code ' + e.code + '). Reconnecting in ' +
                       (delay / 1000).toFixed(1) + ' s…', 'error');
            setTimeout(connect, delay);
        };
    }

    // Why the server would refuse this frame, or null; checked before it is ever sent.
    function refusalOf(message, frame) {
        const length = Array.from(message.replace(SERVER_TRIM, '')).length;  // code points
        if (length > limits.message_max_chars) {
            return 'Not sent: messages are at most ' + limits.message_max_chars +
                   ' characters, this one has ' + length + ' (message_too_long)';
        }
        if (frame.length > limits.frame_max_chars) {
            return 'Not sent: frames are at most ' + limits.frame_max_chars +
                   ' characters (frame_too_large)';
        }
        return null;
    }

    function submit() {
        const message = messageInput.value;
        if (message.replace(SERVER_TRIM, '') === '') {
            return;
        }
        const clientId = newClientId();
        const frame = JSON.stringify({'message': message, 'client_id': clientId});
        const refusal = refusalOf(message, frame);
        if (refusal !== null) {
            errorLine.textContent = refusal;  // and the text stays in the input, to edit
            return;
        }
        errorLine.textContent = '';
        pending.set(clientId, frame);
        showOutbox();
        sendPending(clientId);
        messageInput.value = '';
    }

    messageInput.focus();
    messageInput.onkeyup = function (e) {
        if (e.key === 'Enter') {
            submitButton.click();
        }
    };
    submitButton.onclick = submit;

    // For people poking around in the console, and for the browser tests.
    window.chatClient = {
        socket: () => socket,
        pending: () => pending.size,
        connections: () => connections,
        // page events: send one JSON frame on the open socket; false when it is not open.
        send: function (frame) {
            if (socket === null || socket.readyState !== WebSocket.OPEN) {
                return false;
            }
            socket.send(JSON.stringify(frame));
            return true;
        },
    };
    connect();
})();
