// @mentions: a message that names the reader ("@alice", any case, not "@alicex") gets the
// class "mention" on its element; when the tab is hidden, a browser notification too. The
// browser is asked for permission only when the reader clicks #notify-button. The class
// follows the message's final state: an edit that adds or removes the mention, or a
// deletion, updates it (an edit notifies nobody: the message was seen, or will be).
(function () {
    'use strict';

    const sidebar = document.getElementById('rooms-sidebar');
    const button = document.getElementById('notify-button');
    const roomName = JSON.parse(document.getElementById('room-name').textContent);
    const me = sidebar.dataset.me;
    // "@" + the name, not inside a longer name: letters, digits and - _ . ' carry a name on.
    const NAME_GOES_ON = /[\p{L}\p{M}\p{N}_.'\u2019-]/u;

    function mentionsMe(text) {
        const wanted = '@' + me.toLocaleLowerCase();
        const lower = String(text).toLocaleLowerCase();
        for (let at = lower.indexOf(wanted); at !== -1; at = lower.indexOf(wanted, at + 1)) {
            const before = at === 0 ? '' : lower[at - 1];
            const after = lower.slice(at + wanted.length).match(/^./u);
            const startsWord = before === '' || !NAME_GOES_ON.test(before);
            const endsName = after === null || !NAME_GOES_ON.test(after[0]) ||
                             (after[0] === '.' && !NAME_GOES_ON.test(lower[at + wanted.length + 1] || ' '));
            if (startsWord && endsName) {
                return true;
            }
        }
        return false;
    }

    function notify(data) {
        if (!('Notification' in window) || Notification.permission !== 'granted') {
            return;
        }
        // The text goes in as text: notifications render no HTML. A guest is marked, as
        // everywhere else a name is shown: "Security Team (guest)" is nobody's account.
        const who = data.user + (data.guest ? ' (guest)' : '');
        new Notification(who + ' mentioned you in ' + roomName, {body: data.message});
    }

    function mentioned(data) {
        return !data.deleted && typeof data.message === 'string' && mentionsMe(data.message);
    }

    document.addEventListener('chat:message', (event) => {
        const {data, element, history} = event.detail;
        // Its final state: a change that waited for the message was applied before this.
        const shown = element && element.chatData ? element.chatData : data;
        if (!mentioned(shown)) {
            return;
        }
        if (element) {
            element.classList.add('mention');
        }
        if (!history && document.hidden) {
            notify(shown);
        }
    });

    document.addEventListener('chat:change', (event) => {
        const {data, element} = event.detail;
        element.classList.toggle('mention', mentioned(data));
    });

    function showButton() {
        button.hidden = !('Notification' in window) || Notification.permission !== 'default';
    }
    button.addEventListener('click', () => {
        Notification.requestPermission().then(showButton);
    });
    showButton();

    window.chatMentions = {mentionsMe: mentionsMe};  // for the browser tests
})();
