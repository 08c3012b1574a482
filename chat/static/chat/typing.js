// "alice is typing…": sends {"typing": true} while you type (at most once per
// TYPING_SEND_EVERY_MS; the server drops more), and shows who else is typing in <p id="typing">
// for TYPING_SHOWN_MS after their last signal, or until their message arrives or they leave.
// Nothing of it is stored.
(function () {
    'use strict';

    // Longer than the server's CHAT_TYPING_THROTTLE_SECONDS (2 s), so that no signal sent
    // is dropped there; and under half of TYPING_SHOWN_MS, so a steady typist stays shown.
    const TYPING_SEND_EVERY_MS = 2500;
    const TYPING_SHOWN_MS = 5000;

    const line = document.getElementById('typing');
    const typing = new Map();  // "name\u0000guest" -> {name, guest, timer}
    let lastSentAt = -Infinity;

    function key(name, guest) {
        return name + '\u0000' + Boolean(guest);
    }

    function show() {
        const names = Array.from(typing.values(), (who) => who.name + (who.guest ? ' (guest)' : ''));
        if (names.length === 0) {
            line.textContent = '';
        } else if (names.length === 1) {
            line.textContent = names[0] + ' is typing…';
        } else if (names.length <= 3) {
            line.textContent = names.slice(0, -1).join(', ') + ' and ' + names.at(-1) +
                               ' are typing…';
        } else {
            line.textContent = 'Several people are typing…';
        }
    }

    function stopped(whoKey) {
        const who = typing.get(whoKey);
        if (who !== undefined) {
            clearTimeout(who.timer);
            typing.delete(whoKey);
            show();
        }
    }

    document.addEventListener('chat:frame', (event) => {
        const signal = event.detail.typing;
        if (!signal || typeof signal.user !== 'string') {
            return;
        }
        const whoKey = key(signal.user, signal.guest);
        const who = typing.get(whoKey) || {name: signal.user, guest: Boolean(signal.guest)};
        clearTimeout(who.timer);
        who.timer = setTimeout(() => stopped(whoKey), TYPING_SHOWN_MS);
        typing.set(whoKey, who);
        show();
    });
    // Their message is what they were typing.
    document.addEventListener('chat:message', (event) => {
        const data = event.detail.data;
        stopped(key(data.user, data.guest));
    });
    // Gone from the room: gone from the line. Presence names guests "name (guest)".
    document.addEventListener('chat:presence', (event) => {
        const present = new Set(event.detail.presence.names);  // detail: the presence frame
        for (const [whoKey, who] of typing) {
            if (!present.has(who.name + (who.guest ? ' (guest)' : ''))) {
                stopped(whoKey);
            }
        }
    });
    // Disconnected: nobody's signals reach us, so show none.
    document.addEventListener('chat:connection', (event) => {
        if (event.detail.state !== 'open') {
            for (const whoKey of Array.from(typing.keys())) {
                stopped(whoKey);
            }
        }
    });

    // Delegated: the page may replace its input, it keeps its id.
    document.addEventListener('input', (event) => {
        const input = event.target;
        if (input.id !== 'chat-message-input' || input.value.trim() === '') {
            return;
        }
        const now = performance.now();
        if (now - lastSentAt >= TYPING_SEND_EVERY_MS && window.chatClient &&
                window.chatClient.send({typing: true})) {
            lastSentAt = now;
        }
    });
})();
