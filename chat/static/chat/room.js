// The room page's client: one WebSocket that reconnects by itself and loses nothing.
//
// - Messages are shown as text (the log is a <textarea>; .value, never innerHTML).
// - Every send carries a random client_id and stays in `pending` until the server echoes
//   it back, so a send is retried after a reconnect and the server stores it once.
// - After a drop it reconnects with exponential backoff and jitter, asking for every
//   message after the last id it has (`?after=`); ids it has already shown are skipped.
(function () {
    'use strict';

    const BACKOFF_FIRST_MS = 500;
    const BACKOFF_MAX_MS = 15000;
    const RATE_LIMITED_RETRY_MS = 1000;

    const roomName = JSON.parse(document.getElementById('room-name').textContent);
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
    const pending = new Map();  // client_id -> frame, in the order they were typed

    function showStatus(text, kind) {
        statusLine.textContent = text;
        statusLine.className = 'notice ' + kind;
    }

    function showOutbox() {
        outboxStatus.textContent = pending.size === 0 ? '' :
            pending.size + (pending.size === 1 ? ' message' : ' messages') + ' waiting to be sent';
    }

    function appendToLog(data) {
        const who = data.user === undefined ? '' : data.user + (data.guest ? ' (guest)' : '') + ': ';
        chatLog.value += who + data.message + '\n';
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
        } else if (data.presence) {
            const p = data.presence;
            presenceLine.textContent = p.count + ' online: ' + p.names.join(', ');
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
        socket = new WebSocket(url);
        socket.onopen = function () {
            failedAttempts = 0;
            errorLine.textContent = '';
            showStatus('Connected', 'ok');
            for (const clientId of pending.keys()) {
                sendPending(clientId);
            }
        };
        socket.onmessage = (e) => onMessage(JSON.parse(e.data));
        socket.onclose = function (e) {
            const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failedAttempts);
            const delay = ceiling / 2 + Math.random() * ceiling / 2;
            failedAttempts += 1;
            showStatus('Disconnected (code ' + e.code + '). Reconnecting in ' +
                       (delay / 1000).toFixed(1) + ' s…', 'error');
            setTimeout(connect, delay);
        };
    }

    function submit() {
        const message = messageInput.value;
        if (message.trim() === '') {
            return;
        }
        const clientId = newClientId();
        pending.set(clientId, JSON.stringify({'message': message, 'client_id': clientId}));
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
    window.chatClient = {socket: () => socket, pending: () => pending.size};
    connect();
})();
