// Moderation on the room page (docs/protocol.md, moderation): beside each message of
// someone else, a small menu. Everybody may Report a message; a moderator (the room's
// owner or moderators, site staff) may also Mute…, Kick or Ban… its author, and, from the
// presence list, a logged-in person. Each is a form post to /rooms/<room>/<action>/ with
// the page's CSRF token; the server answers with the room page and a notice. A guest has
// no username: the forms name them by the message they sent.
(function () {
    'use strict';

    const settings = JSON.parse(document.getElementById('chat-moderation').textContent);
    const roomName = JSON.parse(document.getElementById('room-name').textContent);
    const csrf = document.getElementById('rooms-sidebar').dataset.csrf;
    const base = '/rooms/' + encodeURIComponent(roomName) + '/';
    // What the server's forms accept as a length (chat.moderation.DURATIONS).
    const DURATIONS = [['5m', '5 minutes'], ['1h', '1 hour'], ['1d', '1 day'], ['', 'Until lifted']];

    function field(form, name, value) {
        const input = document.createElement('input');
        input.type = 'hidden';
        input.name = name;
        input.value = value;
        form.append(input);
    }

    function actionForm(action, label, target, options) {
        const form = document.createElement('form');
        form.method = 'post';
        form.action = base + action + '/';
        form.className = 'moderation-action ' + action;
        field(form, 'csrfmiddlewaretoken', csrf);
        field(form, target.name, target.value);
        if (options.duration) {
            const select = document.createElement('select');
            select.name = 'duration';
            select.setAttribute('aria-label', label + ' for how long');
            for (const [value, text] of DURATIONS) {
                select.append(new Option(text, value));
            }
            form.append(select, ' ');
        }
        if (options.reason) {
            const reason = document.createElement('input');
            reason.name = 'reason';
            reason.maxLength = 500;
            reason.placeholder = 'Reason (optional)';
            reason.setAttribute('aria-label', label + ': reason (optional)');
            form.append(reason, ' ');
        }
        const submit = document.createElement('button');
        submit.type = 'submit';
        submit.textContent = label;
        form.append(submit);
        return form;
    }

    function menu(who, target, moderate, report) {
        const details = document.createElement('details');
        details.className = 'moderation-menu';
        const summary = document.createElement('summary');
        summary.textContent = '⋯';
        summary.setAttribute('aria-label', 'Actions for ' + who);
        summary.title = 'Actions for ' + who;
        const items = document.createElement('div');
        items.className = 'moderation-items';
        items.setAttribute('role', 'group');
        items.setAttribute('aria-label', 'Actions for ' + who);
        if (report) {
            items.append(actionForm('report', 'Report', {name: 'message', value: target.value},
                                    {reason: true}));
        }
        if (moderate) {
            items.append(actionForm('mute', 'Mute', target, {duration: true, reason: true}),
                         actionForm('kick', 'Kick', target, {reason: true}),
                         actionForm('ban', 'Ban', target, {duration: true, reason: true}));
        }
        details.append(summary, items);
        return details;
    }

    // A deleted message has nothing left to report (the server refuses it): its menu keeps
    // a moderator's actions on its author, and a reader who is none gets no menu at all.
    function decorateMessage(element) {
        const author = element.dataset.author || '';
        if (element.classList.contains('mine') || author.startsWith('bot:') || !element.dataset.id) {
            return;
        }
        const deleted = element.classList.contains('deleted');
        const shown = element.querySelector(':scope > .moderation-menu');
        if (shown !== null) {
            if (shown.dataset.deleted === String(deleted)) {
                return;
            }
            shown.remove();  // deleted since: its menu is made again with what still applies
        }
        const report = settings.may_report && !deleted;
        if (!report && !settings.moderator) {
            return;
        }
        const who = author.slice(author.indexOf(':') + 1) + (author.startsWith('guest:') ? ' (guest)' : '');
        const made = menu(who, {name: 'message', value: element.dataset.id}, settings.moderator, report);
        made.dataset.deleted = String(deleted);
        element.append(made);
    }

    function decoratePresence(list) {
        if (!settings.moderator) {
            return;
        }
        for (const item of list.querySelectorAll('li:not(.guest)')) {
            const name = item.querySelector('.name');
            if (!name || item.querySelector('.moderation-menu') || name.textContent === settings.me) {
                continue;
            }
            item.append(' ', menu(name.textContent, {name: 'username', value: name.textContent},
                                  true, false));
        }
    }

    const messages = document.getElementById('messages');
    const presence = document.getElementById('presence');
    // Messages added, and a message's class changed (room.js marks a deletion with it).
    new MutationObserver(function (changes) {
        for (const change of changes) {
            const nodes = change.type === 'attributes' ? [change.target] : change.addedNodes;
            for (const node of nodes) {
                if (node.nodeType === Node.ELEMENT_NODE && node.parentNode === messages &&
                        node.classList.contains('message')) {
                    decorateMessage(node);
                }
            }
        }
    }).observe(messages, {childList: true, attributes: true, attributeFilter: ['class'], subtree: true});
    new MutationObserver(function () { decoratePresence(presence); }).observe(presence, {childList: true});
    messages.querySelectorAll('.message').forEach(decorateMessage);
})();
