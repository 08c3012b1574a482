// The room page's client: one WebSocket that reconnects by itself and loses nothing.
//
// Loaded with a plain <script defer> (no module, no build step): it runs once the page is
// parsed. Other scripts (rooms sidebar, typing indicator) load the same way, after it, and
// hook in through these DOM events and one function, a stable contract:
//
//   document "chat:message"    detail {data, element, history}: a message frame rendered;
//                              data is the frame, element its node in #messages, history is
//                              true for the join backlog, a catch-up or an older page.
//   document "chat:change"     detail {data, element}: an edit or deletion shown; data is
//                              the message's final state.
//   document "chat:presence"   detail: the presence frame ({"presence": {...}}).
//   document "chat:connection" detail {state: "open" | "closed"}.
//   document "chat:frame"      detail: any other frame this page does not handle itself.
//   window.chatClient.send(object)  sends object as one JSON frame on the open socket;
//                              returns false (and sends nothing) while it is not open.
//
// The rich view (#messages, role="log") holds one element per message: data-id, the author
// in .author, the text in .text (textContent only, never HTML; links built as nodes; both
// dir="auto", so each is isolated from the text around it), a
// <time datetime> in the reader's local time (dates.js, as on every page); .mine for the
// reader's own, .guest for guests. A message that follows its author's .continued shows
// neither name nor time, but keeps both for screen readers, and shows the time on hover
// and when the message or something in it has the keyboard's focus.
// The tutorial's #chat-log textarea stays, as a transcript: one line per message, line
// breaks shown as " ↵ ", so no message can forge a line that looks like someone else's.
//
// Delivery: every send carries a random client_id and stays in `pending` (shown in place as
// "sending…") until the server echoes it, so a send lost with a connection is retried after
// the reconnect and stored once. Reconnects back off (0.5 s doubling to 15 s, jittered,
// starting over only after a connection stayed up 5 s) and ask for everything after the
// last id shown (?after=). The socket recovers a bounded number; when more were missed it
// says so ({"catch_up": {"recovered": false, "after": A, "until": S}}, docs/protocol.md),
// and the page reads (A, S] from the messages endpoint, page by page, holding the live
// messages that arrive meanwhile until the gap before them is filled: every message once,
// in order. A message over the server's limits (json_script "chat-limits") is never sent:
// it stays in the input, with the reason. A message the server refuses as `overloaded` shows
// "Server busy, retrying…" and goes again by itself after the error's retry_after (the
// server's slot for this page, from what it drains: neither doubled nor grown here, 15 s
// at most); meanwhile nothing else goes out, and then the waiting ones go in the order they
// were typed, each with its client_id: stored once, in order.
//
// Edits and deletions (docs/protocol.md, 'Edits and deletions'): the reader's own messages
// have Edit and Delete controls (a moderator's page: Delete on everyone's), sent as
// {"edit": ...} and {"delete": ...} frames. Changes arrive as numbered `edit` and `delete`
// frames; each message keeps the number of the change it shows (data-change) and ignores
// older ones, so applying one twice is harmless, and a change of a message not shown yet
// waits for it. The page keeps the room's change number and reconnects with
// ?after=<id>&changes=<C>; changes the socket leaves to it are read over HTTP
// (?changes_after=). An edited message shows "(edited)" beside its time, a deleted one
// "message deleted", in #messages and in the #chat-log transcript alike.
//
// Heartbeat: after limits.heartbeat_seconds without a frame from the server, the page sends
// {"ping": true}; if nothing at all arrives limits.heartbeat_timeout_seconds later, the
// connection is taken for dead (a cut network looks "Connected" for minutes otherwise):
// the page says "Connection lost" and reconnects, catching up.
//
// Sign-in: the page was rendered for one sign-in (json_script "chat-reader", its sign_in
// tag) and every socket names it (?as=); a socket whose session now speaks as someone else
// (a logout, a login, a new name, in another tab or while this one was offline) is closed
// with 4401 before it stores anything. The page then sends nothing more: it keeps the
// draft and the unsent messages in sessionStorage and reloads, so the header, the CSRF
// token and "mine" are the new sign-in's, and puts them back in the composer to check.
(function () {
    'use strict';

    const BACKOFF_FIRST_MS = 500;
    const BACKOFF_MAX_MS = 15000;
    const RATE_LIMITED_RETRY_MS = 1000;
    // After `overloaded`: the wait is the server's retry_after, which already spreads the
    // refused pages over what it drains (docs/protocol.md, overloaded); at most this long,
    // the server's own longest hint, so that no hint can strand the page.
    const BUSY_RETRY_MAX_MS = 15000;
    // A connection that stayed up this long was not dropped for something it sent.
    const HEALTHY_AFTER_MS = 5000;
    // Close codes after which the server wants the page back at once (docs/protocol.md, close codes):
    // the socket's lifetime over is no failure to back off from.
    const RECONNECT_AT_ONCE = new Set([4000]);
    // The socket's sign-in is not the page's (docs/protocol.md, close codes): reload as the new one.
    const SIGN_IN_CHANGED = 4401;
    // The reader is no longer a member of this private room (docs/protocol.md, close codes):
    // removed by its owner, or left in another tab. The page stays closed.
    const NOT_A_MEMBER = 4403;
    // The account this browser was signed in as was deactivated (docs/protocol.md, close
    // codes): the page stays closed, and never reconnects as a guest.
    const ACCOUNT_DEACTIVATED = 4412;
    // A moderator kicked the reader out (docs/protocol.md, close codes): the page offers to
    // rejoin, and does not reconnect by itself.
    const KICKED = 4410;
    // A moderator banned the reader from this room: the page stays closed.
    const BANNED = 4411;
    // A room made meanwhile has a name this room's looks like (docs/protocol.md, close codes):
    // a reload goes there, as the page redirects. The page stays closed.
    const LOOKALIKE_ROOM = 4308;
    // What the page keeps across that reload, and how long it stays good for.
    const SIGN_IN_CHANGED_KEY = 'chat:sign-in-changed:';
    const SIGN_IN_KEPT_MS = 5 * 60 * 1000;
    // The socket closes as the change commits, before the response that made it (a login's
    // new session cookie) has reached the browser: a reload that overtook it would be
    // answered for the old cookie, and its own cookie could then overwrite the new one.
    const SIGN_IN_RELOAD_DELAY_MS = 500;
    // At most this many reloads for a changed sign-in within the window: a browser that
    // keeps no cookie would otherwise reload for ever. More than one or two: a reload can
    // still race a slow response, and the page then reloads once more.
    const SIGN_IN_RELOADS_MAX = 5;
    const SIGN_IN_RELOAD_WINDOW_MS = 30000;
    // How long the page asks the server which of its sends were stored before it reloads.
    const STORED_CHECK_MS = 3000;
    const SIGN_IN_NOTICE = 'Your sign-in changed; your unsent message is back in the box: ' +
                           'check it and send again.';
    // One author's messages this close together read as one group, as in most chat apps.
    const GROUP_WITHIN_MS = 5 * 60 * 1000;
    // Closer than this to the bottom counts as reading the newest messages.
    const AT_BOTTOM_PX = 40;
    // Closer than this to the top loads an older page.
    const OLDER_AT_PX = 200;
    const OLDER_PAGE_SIZE = 50;
    // The counter shows from this share of the limit on: earlier it is only noise.
    const COUNTER_FROM = 0.8;
    // How many of its own client ids a page remembers per room, to know its messages again.
    const SENT_IDS_KEPT = 500;
    // What Python's str.strip() removes (str.isspace), so the page counts as the server does.
    const SPACE = '[\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+';
    const SERVER_TRIM = new RegExp('^' + SPACE + '|' + SPACE + '$', 'g');
    // Everything a textarea, or a reader of its text, may take for the end of a line.
    const LINE_BREAKS = /\r\n|[\n\v\f\r\x1c-\x1e\x85\u2028\u2029]/g;
    // http(s) links only; trailing punctuation belongs to the sentence, not the link.
    const LINK = /\bhttps?:\/\/[^\s<>"'`]+/gi;
    const LINK_TRAILER = /[.,;:!?)\]}]+$/;
    // Direction controls (UAX #9): a link's text shows none, so that it reads in the order
    // of where it points (".../gpj.exe" never reads ".../exe.jpg").
    const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
    // What the server's error codes mean, in words; codes stay in data-code attributes.
    const PLAIN_ERRORS = {
        invalid_character: 'This message holds a character that cannot be sent ' +
                           '(an invisible control character, or half an emoji).',
        store_failed: 'The server could not save this message just now. Trying again…',
        overloaded: 'The server is busy. Retrying…',
        frame_too_large: 'This message is too large to send.',
        not_allowed: 'You may not change that message.',
        no_such_message: 'That message is not there any more.',
        message_deleted: 'That message was deleted.',
    };
    // A mute's or ban's refusal with an end: said with the end in the reader's own time
    // (the detail gives it in the server's, for programs).
    const SANCTION_ERRORS = {
        muted: 'A moderator muted you in this room until ',
        banned: 'You are banned from this room until ',
    };
    // Not a close code: the page's own verdict on a socket its heartbeat found dead.
    const CONNECTION_LOST = 'lost';

    const PLAIN_CLOSES = {
        [CONNECTION_LOST]: 'Connection lost.',
        4401: 'Your sign-in changed. Reloading the page…',
        4403: 'You are no longer a member of this room.',
        4412: 'This account has been deactivated.',
        4410: 'A moderator removed you from this room.',
        4411: 'You are banned from this room.',
        4308: 'This room\'s name looks like another room\'s: reload the page to go there.',
        4000: 'The connection was renewed.',
        4408: 'The connection fell behind.',
        4429: 'Disconnected for sending too fast.',
        4430: 'Too many chat tabs or connections are open: close one.',
        4503: 'The chat server is having trouble.',
        4500: 'The chat server ran into an error.',
        4001: 'The chat server is restarting.',
        1009: 'The server refused a message too large to read.',
    };

    const roomName = JSON.parse(document.getElementById('room-name').textContent);
    const limits = JSON.parse(document.getElementById('chat-limits').textContent);
    const reader = JSON.parse(document.getElementById('chat-reader').textContent);
    const scheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
    const baseUrl = scheme + window.location.host + '/ws/chat/' + encodeURIComponent(roomName) + '/';
    const olderUrl = '/chat/' + encodeURIComponent(roomName) + '/messages/';

    const chatLog = document.querySelector('#chat-log');
    const messagesBox = document.querySelector('#messages');
    const newMessagesButton = document.querySelector('#new-messages');
    const statusLine = document.querySelector('#connection-status');
    const errorLine = document.querySelector('#chat-error');
    const presenceSection = document.querySelector('.presence');
    const presenceHeading = document.querySelector('#presence-heading');
    const presenceList = document.querySelector('#presence');
    const outboxStatus = document.querySelector('#outbox-status');
    const charCount = document.querySelector('#char-count');
    const messageInput = document.querySelector('#chat-message-input');
    const submitButton = document.querySelector('#chat-message-submit');

    let socket = null;
    let lastId = null;          // id of the newest message shown; null until the first one
    let oldestId = null;        // id of the oldest message shown
    let olderDone = false;      // no older messages are left to load
    let loadingOlder = false;
    let goneUntil = 0;          // ids up to this were deleted by retention: none is awaited
    let catchingUp = false;     // messages before the last catch_up frame are not live
    let filling = false;        // a gap the socket left out is being read over HTTP...
    let heldFrames = [];        // ...and the socket's messages and markers wait for it
    let failedAttempts = 0;
    let healthyTimer = null;
    let reconnectTimer = null;
    let heartbeatTimer = null;  // the next ping; once sent, the verdict on its answer
    let countdownTimer = null;
    let pageHidden = false;     // left for the back/forward cache: stay disconnected
    let connections = 0;
    let signInChanged = false;  // from then on the page sends nothing
    let restoreTopId = null;    // the message to keep at the top, after a reload for 4401
    // The room's change number applied here: the history's room_change raises it; a room
    // joined with no history had no changes the page could have missed.
    let lastChange = 0;
    let fillingChanges = false; // changes the socket left out are being read over HTTP
    const changesWaiting = new Map();  // id -> the newest change of a message not shown yet
    let busyTimer = null;       // after `overloaded`: nothing goes out until it fires
    const pending = new Map();  // client_id -> {frame, text, element}, in the order typed
    const sentIds = loadSentIds();  // client_id -> id the server stored it under

    // ---- the reader's own messages -------------------------------------------------------

    function sentIdsKey() {
        return 'chat.sent.' + roomName;
    }

    function loadSentIds() {
        try {
            return new Map(JSON.parse(window.localStorage.getItem(sentIdsKey()) || '[]'));
        } catch (error) {
            return new Map();  // storage off or unreadable: this page's sends only
        }
    }

    function rememberSent(clientId, id) {
        sentIds.set(clientId, id);
        const kept = Array.from(sentIds).slice(-SENT_IDS_KEPT);
        try {
            window.localStorage.setItem(sentIdsKey(), JSON.stringify(kept));
        } catch (error) {
            // storage full or off: remembered for this page only
        }
    }

    // Mine: a send of this page (the id its echo was stored under, so nobody who copies a
    // client_id passes), or a logged-in reader's own name. Guests are matched by client id
    // only: two guests may choose one name.
    function isMine(data) {
        if (data.client_id && sentIds.get(data.client_id) === data.id) {
            return true;
        }
        return !reader.guest && data.guest === false && !data.bot && data.user === reader.name;
    }

    // ---- building message elements -------------------------------------------------------

    function oneLine(text) {
        return String(text).replace(LINE_BREAKS, ' ↵ ');
    }

    function appendToLog(data) {
        chatLog.value += transcriptLine(data);
        chatLog.scrollTop = chatLog.scrollHeight;
    }

    function transcriptLine(data) {
        const tag = authorTag(data);
        const who = data.user === undefined ? '' : data.user + (tag ? ' ' + tag : '') + ': ';
        if (data.deleted) {
            return who + '(message deleted)\n';
        }
        return oneLine(who + data.message) + (data.edited ? ' (edited)' : '') + '\n';
    }

    // The transcript again, from the messages shown: a change rewrites a line in place.
    function rewriteLog() {
        const shown = Array.from(messagesBox.querySelectorAll('.message[data-id]'));
        chatLog.value = shown.map((element) => transcriptLine(element.chatData)).join('');
    }

    // The text as text nodes, with http(s) links as <a> nodes: never parsed as HTML.
    function fillText(parent, text) {
        let done = 0;
        for (const match of text.matchAll(LINK)) {
            const link = match[0].replace(LINK_TRAILER, '');
            let url;
            try {
                url = new URL(link);
            } catch (error) {
                continue;
            }
            if (url.protocol !== 'http:' && url.protocol !== 'https:') {
                continue;
            }
            parent.append(text.slice(done, match.index));
            const anchor = document.createElement('a');
            anchor.href = url.href;
            anchor.textContent = link.replace(BIDI_CONTROLS, '');
            anchor.dir = 'ltr';
            anchor.rel = 'noopener noreferrer';
            anchor.target = '_blank';
            parent.append(anchor);
            done = match.index + link.length;
        }
        parent.append(text.slice(done));
    }

    // A user's name, as a link to the reader's direct messages with them (docs/protocol.md,
    // private rooms and direct messages); a guest's name, or the reader's own, as text.
    function personName(name, guest) {
        if (guest || reader.guest || name === reader.name) {
            return document.createTextNode(name);
        }
        const link = document.createElement('a');
        link.className = 'dm-link';
        link.href = '/chat/' + encodeURIComponent('@' + name) + '/';
        link.title = 'Direct messages with ' + name;
        link.textContent = name;
        return link;
    }

    // Guests and bots (programs posting, docs/programs.md) are marked: neither passes as a user.
    function authorTag(data) {
        return data.bot ? '(bot)' : data.guest ? '(guest)' : null;
    }

    function authorHeader(name, tagText) {
        const header = document.createElement('div');
        header.className = 'meta';
        const author = document.createElement('span');
        author.className = 'author';
        author.dir = 'auto';  // isolated: a right-to-left name does not reorder its tag
        author.append(personName(name, tagText !== null));  // a guest or a bot: no DM
        header.append(author);
        if (tagText) {
            const tag = document.createElement('span');
            tag.className = 'tag';
            tag.textContent = tagText;
            header.append(' ', tag);
        }
        return header;
    }

    function messageElement(data) {
        const element = document.createElement('div');
        element.className = 'message';
        element.chatData = data;
        element.dataset.id = data.id;
        element.dataset.change = data.change || 0;
        element.dataset.author = (data.bot ? 'bot:' : data.guest ? 'guest:' : 'user:') + data.user;
        element.classList.toggle('guest', Boolean(data.guest));
        element.classList.toggle('mine', isMine(data));
        const header = authorHeader(data.user, authorTag(data));
        const when = new Date(data.ts);
        if (!Number.isNaN(when.getTime())) {
            const time = document.createElement('time');
            time.dateTime = data.ts;
            time.textContent = chatDates.time(when);
            time.title = chatDates.full(when);
            header.append(' ', time);
            element.dataset.day = chatDates.dayKey(when);
            element.dataset.ms = when.getTime();
        }
        const text = document.createElement('div');
        text.className = 'text';
        text.dir = 'auto';  // isolated: its direction controls reach nothing around it
        element.append(header, text);
        showFinalState(element);
        return element;
    }

    // ---- edits and deletions --------------------------------------------------------------

    // The message's text, "(edited)" or "message deleted", and its controls, from chatData.
    function showFinalState(element) {
        const data = element.chatData;
        const text = element.querySelector('.text');
        text.replaceChildren();
        element.classList.toggle('deleted', Boolean(data.deleted));
        if (data.deleted) {
            text.textContent = 'message deleted';
        } else {
            fillText(text, String(data.message));
        }
        const header = element.querySelector('.meta');
        let edited = header.querySelector('.edited');
        if (data.edited && !data.deleted) {
            if (edited === null) {
                edited = document.createElement('span');
                edited.className = 'edited';
                edited.textContent = '(edited)';
                header.append(' ', edited);
            }
            const when = new Date(data.edited);
            edited.title = Number.isNaN(when.getTime()) ? '' : 'Edited ' + chatDates.full(when);
        } else if (edited !== null) {
            edited.remove();
        }
        const old = element.querySelector('.actions');
        if (old !== null) {
            old.remove();
        }
        const editor = element.querySelector('.edit-box');
        if (editor !== null && (data.deleted || editor.dataset.saving === String(data.change))) {
            editor.remove();  // deleted meanwhile, or its own edit came back
            text.hidden = false;
        }
        const actions = controlsFor(element);
        if (actions !== null) {
            element.append(actions);
            reachControls(element.contains(document.activeElement) ? element : null);
        }
    }

    // The log stays one Tab stop: a message's controls join the Tab order only while the
    // keyboard is on that message (the arrow keys move it there), and leave it after.
    function reachControls(focused) {
        messagesBox.querySelectorAll('.actions button').forEach(function (button) {
            button.tabIndex = focused !== null && focused.contains(button) ? 0 : -1;
        });
    }

    messagesBox.addEventListener('focusin', function (e) {
        reachControls(e.target.closest('.message'));
    });

    function actionButton(label, className, description, onClick) {
        const button = document.createElement('button');
        button.type = 'button';
        button.className = className;
        button.textContent = label;
        button.setAttribute('aria-label', description);
        button.tabIndex = -1;  // until the keyboard is on its message (reachControls)
        button.addEventListener('click', onClick);
        return button;
    }

    // Edit and Delete on the reader's own messages, Delete on anyone's for a moderator.
    function controlsFor(element) {
        const data = element.chatData;
        const mine = element.classList.contains('mine');
        if (data.deleted || data.id === undefined || !(mine || reader.moderates)) {
            return null;
        }
        const actions = document.createElement('div');
        actions.className = 'actions';
        const which = 'message ' + data.id + ' by ' + data.user;
        if (mine) {
            actions.append(actionButton('Edit', 'edit-message', 'Edit ' + which, () => startEdit(element)));
        }
        actions.append(actionButton('Delete', 'delete-message', 'Delete ' + which, () => askDelete(element)));
        return actions;
    }

    function askDelete(element) {
        const actions = element.querySelector('.actions');
        const question = document.createElement('span');
        question.textContent = 'Delete this message?';
        const yes = actionButton('Delete', 'confirm-delete', 'Yes, delete message ' + element.dataset.id, function () {
            if (!sendChange({delete: {id: Number(element.dataset.id)}})) {
                return;
            }
            yes.disabled = true;
        });
        const no = actionButton('Keep', 'keep-message', 'Keep message ' + element.dataset.id, function () {
            showFinalState(element);
            element.querySelector('.delete-message').focus();
        });
        actions.replaceChildren(question, ' ', yes, ' ', no);
        yes.focus();
    }

    function startEdit(element) {
        if (element.querySelector('.edit-box') !== null) {
            return;
        }
        const text = element.querySelector('.text');
        const box = document.createElement('div');
        box.className = 'edit-box';
        const input = document.createElement('textarea');
        input.className = 'edit-input';
        input.rows = 2;
        input.value = element.chatData.message;
        input.setAttribute('aria-label', 'New text of message ' + element.dataset.id +
                           ' (Enter saves, Escape cancels)');
        const cancel = function () {
            box.remove();
            text.hidden = false;
            const editButton = element.querySelector('.edit-message');
            if (editButton !== null) {
                editButton.focus();
            }
        };
        const save = function () {
            const message = input.value;
            if (message.replace(SERVER_TRIM, '') === element.chatData.message) {
                cancel();  // nothing changed
                return;
            }
            if (message.replace(SERVER_TRIM, '') === '') {
                showError('An edit cannot be empty: delete the message instead.', 'empty_message');
                return;
            }
            const frame = {edit: {id: Number(element.dataset.id), message: message}};
            const refusal = refusalOf(message, JSON.stringify(frame));
            if (refusal !== null) {
                showError(refusal[0], refusal[1]);
                return;
            }
            if (sendChange(frame)) {
                box.dataset.saving = 'pending';
            }
        };
        input.addEventListener('keydown', function (e) {
            if (e.key === 'Escape') {
                e.preventDefault();
                cancel();
            } else if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
                e.preventDefault();
                save();
            }
        });
        const buttons = document.createElement('div');
        buttons.className = 'edit-buttons';
        buttons.append(
            actionButton('Save', 'save-edit', 'Save message ' + element.dataset.id, save), ' ',
            actionButton('Cancel', 'cancel-edit', 'Cancel editing message ' + element.dataset.id, cancel),
        );
        box.append(input, buttons);
        text.hidden = true;
        text.after(box);
        input.focus();
        input.setSelectionRange(input.value.length, input.value.length);
    }

    function sendChange(frame) {
        if (!isOpen() || signInChanged) {
            showError('Not connected: try again once the chat is back.', 'not_connected');
            return false;
        }
        clearError();
        socket.send(JSON.stringify(frame));
        return true;
    }

    // Apply one change ({id, change, message, edited, deleted}): once, newest wins.
    function applyChange(change) {
        lastChange = Math.max(lastChange, change.change);
        const element = messagesBox.querySelector('.message[data-id="' + change.id + '"]');
        if (element === null) {
            if (lastId === null || change.id > lastId) {  // its message has not come yet
                const waiting = changesWaiting.get(change.id);
                if (waiting === undefined || waiting.change < change.change) {
                    changesWaiting.set(change.id, change);
                }
            }
            return;  // or older than anything shown: loaded in its final state, if ever
        }
        if (change.change <= Number(element.dataset.change)) {
            return;  // already shown, or older than what is
        }
        const editor = element.querySelector('.edit-box');
        if (editor !== null && editor.dataset.saving === 'pending' && !change.deleted) {
            editor.dataset.saving = String(change.change);  // the edit this page saved, surely
        }
        element.chatData = Object.assign({}, element.chatData, {
            message: change.deleted ? '' : change.message,
            edited: change.edited === undefined ? element.chatData.edited : change.edited,
            deleted: change.deleted,
            change: change.change,
        });
        element.dataset.change = change.change;
        showFinalState(element);
        rewriteLog();
        dispatch('chat:change', {data: element.chatData, element: element});
    }

    // Changes the socket left to the page: read over HTTP, page by page (idempotent).
    async function fillChanges(after) {
        if (fillingChanges) {
            return;
        }
        fillingChanges = true;
        let cursor = after;
        let failures = 0;
        try {
            while (cursor !== null) {
                let page = null;
                try {
                    const response = await fetch(olderUrl + '?changes_after=' + cursor);
                    page = response.ok ? await response.json() : null;
                } catch (error) {
                    // offline for a moment: back off, then try again
                }
                if (page === null) {
                    const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failures);
                    failures += 1;
                    await new Promise((resolve) => setTimeout(resolve, backoff));
                    continue;
                }
                failures = 0;
                page.messages.forEach(applyChange);
                cursor = page.next_changes_after;
            }
        } finally {
            fillingChanges = false;
        }
    }

    function isMessage(node) {
        return node !== null && node.classList.contains('message') && !node.classList.contains('pending');
    }

    function messageBefore(element) {
        let node = element.previousElementSibling;
        while (node !== null && !isMessage(node)) {
            node = node.previousElementSibling;
        }
        return node;
    }

    function messageAfter(element) {
        let node = element.nextElementSibling;
        while (node !== null && !isMessage(node)) {
            node = node.nextElementSibling;
        }
        return node;
    }

    // A day separator before the first message of each day, and .continued on a message
    // that follows one of the same author within GROUP_WITHIN_MS on the same day.
    function decorate(element) {
        if (!isMessage(element)) {
            return;
        }
        const previous = messageBefore(element);
        const newDay = previous === null || previous.dataset.day !== element.dataset.day;
        const before = element.previousElementSibling;
        const hasSeparator = before !== null && before.classList.contains('day-separator');
        if (newDay && element.dataset.day && !hasSeparator) {
            const separator = document.createElement('div');
            separator.className = 'day-separator';
            const label = document.createElement('span');
            label.textContent = chatDates.day(new Date(Number(element.dataset.ms)));
            separator.append(label);
            element.before(separator);
        } else if (!newDay && hasSeparator) {
            before.remove();
        }
        const continued = !newDay && previous.dataset.author === element.dataset.author &&
            Number(element.dataset.ms) - Number(previous.dataset.ms) < GROUP_WITHIN_MS;
        element.classList.toggle('continued', continued);
    }

    function placeLive(element) {
        messagesBox.insertBefore(element, messagesBox.querySelector('.pending'));
        decorate(element);
    }

    // ---- scrolling ------------------------------------------------------------------------

    function atBottom() {
        return messagesBox.scrollHeight - messagesBox.scrollTop - messagesBox.clientHeight < AT_BOTTOM_PX;
    }

    function scrollToBottom() {
        messagesBox.scrollTop = messagesBox.scrollHeight;
        newMessagesButton.hidden = true;
    }

    messagesBox.addEventListener('scroll', function () {
        if (atBottom()) {
            newMessagesButton.hidden = true;
        }
        if (messagesBox.scrollTop < OLDER_AT_PX) {
            loadOlder();
        }
    });
    // The keyboard reads the log a message at a time, the log staying one Tab stop: in it,
    // the arrow keys move the focus to the message above or below (from the log itself, to
    // the last or first message in view); at either end they scroll, as before.
    messagesBox.addEventListener('keydown', function (e) {
        if ((e.key !== 'ArrowUp' && e.key !== 'ArrowDown') || e.target.closest('.edit-box')) {
            return;  // in an edit box, the arrows move the caret
        }
        const up = e.key === 'ArrowUp';
        const current = e.target.closest('.message');
        let next;
        if (current === null) {
            const shown = Array.from(messagesBox.querySelectorAll('.message')).filter(function (element) {
                const box = element.getBoundingClientRect();
                const frame = messagesBox.getBoundingClientRect();
                return box.bottom > frame.top && box.top < frame.bottom;
            });
            next = up ? shown[shown.length - 1] : shown[0];
        } else {
            next = up ? current.previousElementSibling : current.nextElementSibling;
            while (next && !next.classList.contains('message')) {
                next = up ? next.previousElementSibling : next.nextElementSibling;
            }
        }
        if (next) {
            e.preventDefault();
            next.tabIndex = -1;  // focusable by script, not one more Tab stop
            next.focus();
        }
    });
    newMessagesButton.addEventListener('click', function () {
        scrollToBottom();
        messageInput.focus();
    });

    // ---- events for the other scripts --------------------------------------------------

    function dispatch(name, detail) {
        document.dispatchEvent(new CustomEvent(name, {detail: detail}));
    }

    // ---- status and errors ---------------------------------------------------------------

    function showStatus(text, kind, code) {
        statusLine.textContent = text;
        statusLine.className = 'notice ' + kind;
        if (code === undefined) {
            delete statusLine.dataset.code;
        } else {
            statusLine.dataset.code = code;
        }
    }

    function showError(text, code) {
        errorLine.textContent = text;
        errorLine.dataset.code = code;
    }

    function clearError() {
        errorLine.textContent = '';
        delete errorLine.dataset.code;
    }

    function plainError(error) {
        const ends = new Date(error.until);
        if (SANCTION_ERRORS[error.code] && !Number.isNaN(ends.getTime())) {
            return SANCTION_ERRORS[error.code] + chatDates.full(ends) + '.';
        }
        return PLAIN_ERRORS[error.code] || error.detail;
    }

    function showOutbox() {
        const waiting = Array.from(pending.values()).filter((item) => !item.refused).length;
        outboxStatus.textContent = waiting === 0 ? '' :
            waiting + (waiting === 1 ? ' message' : ' messages') + ' waiting to be sent';
    }

    // ---- the outbox ----------------------------------------------------------------------

    function newClientId() {
        const bytes = new Uint8Array(16);
        window.crypto.getRandomValues(bytes);
        return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    }

    function isOpen() {
        return socket !== null && socket.readyState === WebSocket.OPEN;
    }

    function sendPending(clientId) {
        const item = pending.get(clientId);
        if (item === undefined || item.refused) {
            return;
        }
        if (busyTimer !== null) {
            item.busy = true;  // sent in its turn when the server is asked again
        } else if (isOpen() && !signInChanged) {
            item.sent = true;
            item.busy = false;
            socket.send(item.frame);
        }
    }

    function onOverloaded(error) {
        const item = pending.get(error.client_id);
        item.busy = true;
        const delivery = item.element.querySelector('.delivery');
        delivery.textContent = 'Server busy, retrying…';
        delivery.dataset.code = error.code;
        if (busyTimer !== null) {
            return;  // one sent before the first refusal reached us: it goes with the rest
        }
        const asked = Number(error.retry_after) * 1000;  // NaN without a hint
        const wait = asked > 0 ? Math.min(asked, BUSY_RETRY_MAX_MS) : RATE_LIMITED_RETRY_MS;
        busyTimer = setTimeout(sendAfterBusy, wait);
    }

    function sendAfterBusy() {
        busyTimer = null;
        for (const [clientId, item] of pending) {  // in the order typed
            if (item.busy || !item.sent) {
                const delivery = item.element.querySelector('.delivery');
                if (delivery.dataset.code === 'overloaded') {
                    delete delivery.dataset.code;
                    delivery.textContent = 'sending…';
                }
                sendPending(clientId);
            }
        }
    }

    function pendingElement(clientId, text) {
        const element = document.createElement('div');
        element.className = 'message mine pending';
        element.dataset.clientId = clientId;
        element.classList.toggle('guest', Boolean(reader.guest));
        const body = document.createElement('div');
        body.className = 'text';
        body.dir = 'auto';
        fillText(body, text);
        const delivery = document.createElement('div');
        delivery.className = 'delivery';
        delivery.textContent = 'sending…';
        element.append(authorHeader(reader.name, authorTag(reader)), body, delivery);
        return element;
    }

    function showRefused(clientId, error) {
        const item = pending.get(clientId);
        item.refused = true;
        item.element.classList.add('failed');
        const delivery = item.element.querySelector('.delivery');
        delivery.dataset.code = error.code;
        const reason = document.createElement('span');
        reason.textContent = 'Not sent: ' + plainError(error) + ' ';
        const retry = document.createElement('button');
        retry.type = 'button';
        retry.textContent = 'Retry';
        retry.addEventListener('click', function () {
            item.refused = false;
            item.element.classList.remove('failed');
            delete delivery.dataset.code;
            delivery.textContent = 'sending…';
            showOutbox();
            sendPending(clientId);
            messageInput.focus();
        });
        const discard = document.createElement('button');
        discard.type = 'button';
        discard.textContent = 'Discard';
        discard.addEventListener('click', function () {
            pending.delete(clientId);
            item.element.remove();
            showOutbox();
            messageInput.focus();
        });
        delivery.replaceChildren(reason, retry, ' ', discard);
        showOutbox();
    }

    // ---- frames --------------------------------------------------------------------------

    function onMessage(data) {
        if (data.error) {
            onError(data.error);
        } else if (data.edit) {
            applyChange(Object.assign({deleted: false}, data.edit));
        } else if (data.delete) {
            applyChange(Object.assign({deleted: true, message: ''}, data.delete));
        } else if (filling && (data.catch_up || data.message !== undefined)) {
            heldFrames.push(data);  // after the gap being filled
        } else if (data.catch_up) {
            const changes = data.catch_up.changes;
            if (changes) {
                lastChange = Math.max(lastChange, changes.until);
                if (!changes.recovered) {
                    fillChanges(changes.after);
                }
            }
            if (data.catch_up.recovered) {
                catchingUp = false;
            } else {
                fillGap(data.catch_up.after, data.catch_up.until);
            }
        } else if (data.gone) {
            onGone(data.gone.until, !catchingUp);
        } else if (data.pong) {
            // the heartbeat's answer: the frame itself was the news
        } else if (data.presence) {
            showPresence(data.presence);
            dispatch('chat:presence', data);
        } else if (data.message !== undefined) {
            onChatMessage(data);
        } else {
            dispatch('chat:frame', data);
        }
    }

    function onChatMessage(data) {
        const ownEcho = Boolean(data.client_id) && pending.has(data.client_id);
        if (ownEcho) {
            rememberSent(data.client_id, data.id);
            pending.get(data.client_id).element.remove();
            pending.delete(data.client_id);
            showOutbox();
            clearError();  // a success: whatever went wrong before is over
        }
        if (lastId !== null && data.id !== undefined && data.id <= lastId) {
            return;  // already shown: a catch-up overlap or a retried send's echo
        }
        if (data.id !== undefined) {
            lastId = data.id;
            oldestId = oldestId === null ? data.id : oldestId;
        }
        if (data.room_change !== undefined && data.room_change !== null) {
            lastChange = Math.max(lastChange, data.room_change);
        }
        const stick = atBottom() || ownEcho;
        const element = messageElement(data);
        placeLive(element);
        appendToLog(data);
        if (changesWaiting.has(data.id)) {
            const change = changesWaiting.get(data.id);
            changesWaiting.delete(data.id);
            applyChange(change);
        }
        if (restoreTopId !== null && keepReadingPosition()) {
            newMessagesButton.hidden = atBottom();
        } else if (stick) {
            scrollToBottom();
        } else {
            newMessagesButton.hidden = false;
        }
        dispatch('chat:message', {data: data, element: element, history: Boolean(data.history) || catchingUp});
    }

    function onError(error) {
        showError(plainError(error), error.code);
        // An edit or deletion refused: its controls work again (the error says why).
        messagesBox.querySelectorAll('.edit-box[data-saving="pending"]').forEach(function (box) {
            delete box.dataset.saving;
        });
        messagesBox.querySelectorAll('.confirm-delete[disabled]').forEach(function (button) {
            button.disabled = false;
        });
        if (!error.client_id || !pending.has(error.client_id)) {
            return;
        }
        if (error.code === 'overloaded') {
            onOverloaded(error);
        } else if (error.code === 'rate_limited' || error.code === 'store_failed') {
            setTimeout(() => sendPending(error.client_id), RATE_LIMITED_RETRY_MS);
        } else {
            showRefused(error.client_id, error);
        }
    }

    function showPresence(presence) {
        const items = presence.names.map(function (label) {
            const guest = label.endsWith(' (guest)');  // usernames and guest names hold no '('
            const item = document.createElement('li');
            item.classList.toggle('guest', guest);
            const name = document.createElement('span');
            name.className = 'name';
            name.append(personName(guest ? label.slice(0, -' (guest)'.length) : label, guest));
            item.append(name);
            if (guest) {
                const tag = document.createElement('span');
                tag.className = 'tag';
                tag.textContent = '(guest)';
                item.append(' ', tag);
            }
            return item;
        });
        presenceList.replaceChildren(...items);
        // People, not sockets or names: two guests who chose one name count as two.
        presenceHeading.textContent = 'Here now (' + presence.count + ')';
        presenceSection.hidden = false;
    }

    // ---- older history -------------------------------------------------------------------

    // Where the room's history ends for retention (docs/protocol.md, `gone`): a line at the
    // top once the oldest message shown is the first one kept, and no older page asked for.
    function onGone(until, atHistory) {
        goneUntil = Math.max(goneUntil, until);
        if (atHistory && (oldestId === null || oldestId <= goneUntil + 1)) {
            showHistoryGone();
        }
    }

    function showHistoryGone() {
        olderDone = true;
        if (document.getElementById('history-gone') !== null) {
            return;
        }
        const line = document.createElement('p');
        line.id = 'history-gone';
        line.className = 'history-gone';
        line.textContent = limits.retention_days > 0
            ? 'Older messages were deleted after ' + limits.retention_days + ' days.'
            : 'Older messages were deleted.';
        messagesBox.prepend(line);
    }

    async function loadOlder() {
        if (loadingOlder || olderDone || oldestId === null || oldestId <= Math.max(goneUntil + 1, 1)) {
            return;
        }
        loadingOlder = true;
        try {
            const response = await fetch(olderUrl + '?before=' + oldestId + '&limit=' + OLDER_PAGE_SIZE);
            if (!response.ok) {
                return;  // a 429 or an outage: the next scroll up tries again
            }
            const page = await response.json();
            goneUntil = Math.max(goneUntil, page.gone_until || 0);
            const older = page.messages.filter((data) => data.id < oldestId);
            if (older.length === 0) {
                olderDone = true;
                if (goneUntil > 0) {
                    showHistoryGone();
                }
                return;
            }
            const top = messagesBox.firstElementChild;
            const firstShown = isMessage(top) ? top : (top === null ? null : messageAfter(top));
            const shownAt = firstShown === null ? 0 : firstShown.getBoundingClientRect().top;
            if (top !== null && top.classList.contains('day-separator')) {
                top.remove();  // decorate puts it back if the day still starts there
            }
            const elements = older.map(messageElement);
            messagesBox.prepend(...elements);
            elements.forEach(decorate);
            if (firstShown !== null) {
                decorate(firstShown);
            }
            chatLog.value = older.map(transcriptLine).join('') + chatLog.value;
            if (firstShown !== null) {  // what was on screen stays where it was
                messagesBox.scrollTop += firstShown.getBoundingClientRect().top - shownAt;
            }
            oldestId = older[0].id;
            olderDone = page.next_before === null;
            if (olderDone && goneUntil > 0) {
                showHistoryGone();
            }
            older.forEach((data, index) => dispatch('chat:message', {data: data, element: elements[index], history: true}));
        } catch (error) {
            // offline: the next scroll up tries again
        } finally {
            loadingOlder = false;
        }
    }

    // ---- a gap the socket left out -------------------------------------------------------

    // Read (after, until] from the messages endpoint, page by page, then what the socket
    // sent meanwhile. A new socket ends it: that one recovers from the last id shown.
    async function fillGap(after, until) {
        const connection = connections;
        filling = true;
        catchingUp = true;
        let cursor = Math.max(after, lastId === null ? 0 : lastId);
        let failures = 0;
        while (cursor < until) {
            let page = null;
            let wait = 0;
            try {
                const response = await fetch(olderUrl + '?after=' + cursor);
                if (response.ok) {
                    page = await response.json();
                } else {  // a 429 says when to come back; anything else backs off
                    wait = Number(response.headers.get('Retry-After')) * 1000;
                }
            } catch (error) {
                // offline for a moment: back off, then try again
            }
            if (connection !== connections) {
                return;
            }
            if (page === null) {
                const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failures);
                failures += 1;
                await new Promise((resolve) => setTimeout(resolve, Math.max(wait || 0, backoff)));
                if (connection !== connections) {
                    return;
                }
                continue;
            }
            failures = 0;
            for (const data of page.messages.filter((message) => message.id <= until)) {
                onChatMessage(data);
            }
            if (page.next_after === null || page.messages.length === 0) {
                break;
            }
            cursor = page.messages[page.messages.length - 1].id;
        }
        filling = false;
        catchingUp = false;
        while (!filling && heldFrames.length > 0) {
            onMessage(heldFrames.shift());  // a marker among them starts the next fill
        }
    }

    // ---- the connection ------------------------------------------------------------------

    function stopTimers() {
        clearTimeout(reconnectTimer);
        clearInterval(countdownTimer);
        clearTimeout(healthyTimer);
        clearTimeout(heartbeatTimer);
    }

    // Any frame from the server shows the connection alive: ping again after a quiet spell.
    function awaitHeartbeat(thisSocket) {
        clearTimeout(heartbeatTimer);
        heartbeatTimer = setTimeout(function () {
            thisSocket.send(JSON.stringify({ping: true}));
            heartbeatTimer = setTimeout(function () {
                // Nothing came back: forget this socket (its close may never come) and go on.
                socket = null;
                thisSocket.close();
                onClose({code: CONNECTION_LOST});
            }, limits.heartbeat_timeout_seconds * 1000);
        }, limits.heartbeat_seconds * 1000);
    }

    function connect() {
        stopTimers();
        const query = new URLSearchParams({as: reader.sign_in});
        if (lastId !== null) {
            query.set('after', String(lastId));
            query.set('changes', String(lastChange));
        }
        const url = baseUrl + '?' + query;
        catchingUp = lastId !== null;
        filling = false;  // this socket recovers from lastId itself: what was held comes again
        heldFrames = [];
        connections += 1;
        let thisSocket;
        try {
            thisSocket = new WebSocket(url);
        } catch (error) {
            // A URL the browser refuses outright (a blocked port) closes nothing: back off
            // as after a close, or the page would wait for a close that never comes.
            onClose({code: 1006});
            return;
        }
        socket = thisSocket;
        thisSocket.onopen = function () {
            healthyTimer = setTimeout(() => { failedAttempts = 0; }, HEALTHY_AFTER_MS);
            showStatus('Connected', 'ok');
            awaitHeartbeat(thisSocket);
            dispatch('chat:connection', {state: 'open'});
            for (const clientId of pending.keys()) {
                sendPending(clientId);
            }
        };
        thisSocket.onmessage = function (e) {
            if (thisSocket !== socket) {
                return;  // a socket the heartbeat gave up on, heard from too late
            }
            awaitHeartbeat(thisSocket);
            onMessage(JSON.parse(e.data));
        };
        thisSocket.onclose = function (e) {
            if (thisSocket === socket) {
                onClose(e);
            }
        };
    }

    function onClose(e) {
        stopTimers();
        presenceSection.hidden = true;  // who was here is unknown until the next update
        dispatch('chat:connection', {state: 'closed'});
        if (e.code === SIGN_IN_CHANGED) {
            onSignInChanged();
            return;
        }
        if (e.code === NOT_A_MEMBER || e.code === ACCOUNT_DEACTIVATED || e.code === BANNED || e.code === LOOKALIKE_ROOM) {
            showStatus(PLAIN_CLOSES[e.code], 'error', e.code);
            return;
        }
        if (e.code === KICKED) {
            showStatus(PLAIN_CLOSES[KICKED], 'error', e.code);
            const rejoin = document.createElement('button');
            rejoin.type = 'button';
            rejoin.id = 'rejoin';
            rejoin.textContent = 'Rejoin';
            rejoin.addEventListener('click', function () {
                showStatus('Connecting…', 'status');
                messageInput.focus();  // the button goes with the status it sat in
                connect();
            });
            statusLine.append(' ', rejoin);
            return;
        }
        if (pageHidden) {
            return;  // back/forward cache: pageshow reconnects
        }
        let delay = 0;
        if (!RECONNECT_AT_ONCE.has(e.code)) {
            const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failedAttempts);
            delay = ceiling / 2 + Math.random() * ceiling / 2;
            failedAttempts += 1;
        }
        const reason = PLAIN_CLOSES[e.code] || 'Disconnected.';
        const reconnectAt = Date.now() + delay;
        function tick() {
            const seconds = Math.ceil((reconnectAt - Date.now()) / 1000);
            showStatus(reason + (seconds > 0 ? ' Reconnecting in ' + seconds + ' s…' : ' Reconnecting…'),
                       'error', e.code);
        }
        tick();
        countdownTimer = setInterval(tick, 1000);
        reconnectTimer = setTimeout(connect, delay);
    }

    // ---- a changed sign-in ----------------------------------------------------------------

    function signInChangedKey() {
        return SIGN_IN_CHANGED_KEY + roomName;
    }

    // The client ids among these that the server stored (before the sign-in changed).
    async function storedOf(clientIds) {
        if (clientIds.length === 0) {
            return new Set();
        }
        const after = lastId === null ? 0 : lastId;
        const timeout = new Promise((resolve) => setTimeout(resolve, STORED_CHECK_MS, null));
        const answer = fetch(olderUrl + '?after=' + after + '&limit=' + OLDER_PAGE_SIZE)
            .then((response) => response.ok ? response.json() : null)
            .catch(() => null);
        const page = await Promise.race([answer, timeout]);
        // Unknown: put them back anyway; a message seen twice beats a message lost.
        return new Set(page === null ? [] : page.messages.map((data) => data.client_id));
    }

    // The first message at least half in view, to come back to after the reload.
    function firstMessageInView() {
        const top = messagesBox.getBoundingClientRect().top;
        for (const element of messagesBox.querySelectorAll('.message[data-id]')) {
            const box = element.getBoundingClientRect();
            if (box.top + box.height / 2 >= top) {
                return Number(element.dataset.id);
            }
        }
        return null;
    }

    // When this tab last reloaded for a changed sign-in, within the window.
    function recentReloads() {
        try {
            const kept = JSON.parse(window.sessionStorage.getItem(signInChangedKey()));
            const reloads = kept === null || !Array.isArray(kept.reloads) ? [] : kept.reloads;
            return reloads.filter((at) => Date.now() - at < SIGN_IN_RELOAD_WINDOW_MS);
        } catch (error) {
            return [];
        }
    }

    async function onSignInChanged() {
        signInChanged = true;  // nothing more goes out under the old sign-in, nor the new
        const items = Array.from(pending.entries());
        const stored = await storedOf(items.filter(([, item]) => item.sent).map(([id]) => id));
        const unsent = items.filter(([id]) => !stored.has(id)).map(([, item]) => item.text);
        const kept = {
            at: Date.now(),
            draft: messageInput.value,
            unsent: unsent,
            topId: atBottom() ? null : firstMessageInView(),
            reloads: [...recentReloads(), Date.now()],
        };
        if (kept.reloads.length > SIGN_IN_RELOADS_MAX) {
            // Reloaded again and again, and the socket still is not the page's: stop. The
            // texts stay in the composer and the pending list.
            showStatus('Your sign-in changed. Reload the page to chat as who you are now.',
                       'error', SIGN_IN_CHANGED);
            return;
        }
        try {
            window.sessionStorage.setItem(signInChangedKey(), JSON.stringify(kept));
        } catch (error) {
            // storage off: the reload would lose the texts, so leave them on this page
            showStatus('Your sign-in changed. Copy your unsent text, then reload the page.',
                       'error', SIGN_IN_CHANGED);
            return;
        }
        setTimeout(() => window.location.reload(), SIGN_IN_RELOAD_DELAY_MS);
    }

    // After a reload for a changed sign-in: the draft and the unsent messages back in the
    // composer, one after the other, with a word on why; the reading position kept.
    function restoreAfterSignInChange() {
        let kept = null;
        try {
            kept = JSON.parse(window.sessionStorage.getItem(signInChangedKey()));
        } catch (error) {
            return;
        }
        if (kept === null || Date.now() - kept.at > SIGN_IN_KEPT_MS) {
            return;
        }
        // Kept, texts emptied, for the count of reloads (recentReloads).
        window.sessionStorage.setItem(signInChangedKey(), JSON.stringify(
            {...kept, draft: '', unsent: [], topId: null}));
        const texts = [...kept.unsent, kept.draft].filter((text) => text.replace(SERVER_TRIM, '') !== '');
        if (texts.length > 0) {
            messageInput.value = texts.join('\n\n');
            messageInput.setSelectionRange(messageInput.value.length, messageInput.value.length);
            updateCounter();
            showError(SIGN_IN_NOTICE, 'sign_in_changed');
        }
        restoreTopId = kept.topId;
    }

    // While the page brings back the reading position, the history fills in under it; the
    // first scroll of the reader's own (wheel, touch, key) ends that.
    function keepReadingPosition() {
        const target = messagesBox.querySelector('.message[data-id="' + restoreTopId + '"]');
        if (target === null) {
            return false;
        }
        messagesBox.scrollTop += target.getBoundingClientRect().top - messagesBox.getBoundingClientRect().top;
        return true;
    }

    for (const kind of ['wheel', 'touchstart', 'keydown', 'mousedown']) {
        messagesBox.addEventListener(kind, () => { restoreTopId = null; }, {passive: true});
    }

    // The back/forward cache keeps a page alive, socket and all: a page left for another
    // must not stay in the room's presence, so it closes, and comes back when shown again.
    window.addEventListener('pagehide', function () {
        pageHidden = true;
        stopTimers();
        if (socket !== null && socket.readyState <= WebSocket.OPEN) {
            socket.close(1000, 'page hidden');
        }
    });
    window.addEventListener('pageshow', function (e) {
        if (e.persisted) {
            pageHidden = false;
            connect();
        }
    });

    // ---- the composer --------------------------------------------------------------------

    function countOf(message) {
        return Array.from(message.replace(SERVER_TRIM, '')).length;  // code points, trimmed
    }

    // Why the server would refuse this frame, or null; checked before it is ever sent.
    function refusalOf(message, frame) {
        const length = countOf(message);
        if (length > limits.message_max_chars) {
            return ['Not sent: messages are at most ' + limits.message_max_chars +
                    ' characters, this one has ' + length + '.', 'message_too_long'];
        }
        if (frame.length > limits.frame_max_chars) {
            return ['Not sent: this message is too large to send (at most ' +
                    limits.frame_max_chars + ' characters once encoded).', 'frame_too_large'];
        }
        return null;
    }

    function updateCounter() {
        const length = countOf(messageInput.value);
        const max = limits.message_max_chars;
        charCount.textContent = length < max * COUNTER_FROM ? '' : length + ' / ' + max;
        charCount.classList.toggle('over', length > max);
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
            showError(refusal[0], refusal[1]);  // and the text stays in the input, to edit
            return;
        }
        const element = pendingElement(clientId, message);
        messagesBox.append(element);
        pending.set(clientId, {frame: frame, text: message, element: element, refused: false, sent: false,
                              busy: false});
        showOutbox();
        sendPending(clientId);
        messageInput.value = '';
        updateCounter();
        scrollToBottom();
    }

    messageInput.addEventListener('keydown', function (e) {
        // Enter sends; Shift+Enter is a new line; Enter that ends an IME composition is neither.
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
        }
    });
    messageInput.addEventListener('input', updateCounter);
    submitButton.addEventListener('click', function () {
        submit();
        messageInput.focus();
    });

    window.chatClient = {
        socket: () => socket,
        pending: () => pending.size,
        connections: () => connections,
        send: function (object) {
            if (!isOpen() || signInChanged) {
                return false;
            }
            socket.send(JSON.stringify(object));
            return true;
        },
    };
    restoreAfterSignInChange();
    messageInput.focus();
    connect();
})();
