// The index page: the tutorial's focus on the room name box (in a file: the CSP runs no
// inline script), your recent rooms (kept in this browser by sidebar.js), and who is online
// in each room, read again once the page is up and every few seconds while it is shown.
// dates.js shows each room's last message time in the reader's time.
(function () {
    'use strict';

    // The page was rendered before the room it came from let its socket go (a browser
    // leaves the old page only once the new one answers): it asks again once up.
    const ONLINE_REFRESH_MS = 5000;

    document.querySelector('#room-name-input').focus();

    let recent = [];
    try {
        recent = JSON.parse(window.localStorage.getItem('chat:recent-rooms') || '[]');
    } catch (error) {
        recent = [];
    }
    const names = Array.isArray(recent) ? recent.filter((name) => typeof name === 'string') : [];
    const roomsUrl = document.getElementById('active-rooms').dataset.roomsUrl;

    // A private room's address is its key (~...): shown by the title the room list gives it,
    // and not at all once the reader may no longer open it (left, or removed), which the
    // list then leaves out. Public rooms and direct conversations are named by themselves.
    function showRecent(titles) {
        const list = document.getElementById('recent-rooms-list');
        for (const name of names) {
            const title = titles.get(name) || (name.startsWith('~') ? null : name);
            if (title === null) {
                continue;
            }
            const item = document.createElement('li');
            const link = document.createElement('a');
            link.href = '/chat/' + encodeURIComponent(name) + '/';
            link.textContent = title;  // text, never HTML
            item.append(link);
            list.append(item);
        }
        document.getElementById('recent-rooms').hidden = list.children.length === 0;
    }

    async function listRecent() {
        const query = new URLSearchParams({online: '0'});
        names.forEach((name) => query.append('room', name));
        try {
            const response = await fetch(roomsUrl + '?' + query);
            const rooms = response.ok ? (await response.json()).rooms : [];
            showRecent(new Map(rooms.map((room) => [room.name, room.title])));
        } catch (error) {
            showRecent(new Map());  // offline: public rooms by name, no private one
        }
    }

    if (names.length > 0) {
        listRecent();
    }

    const listed = new Map();  // room name -> its "N online" element
    for (const entry of document.querySelectorAll('#active-rooms .room-entry')) {
        listed.set(entry.dataset.room, entry.querySelector('.room-online'));
    }

    async function refreshOnline() {
        if (listed.size === 0 || document.hidden) {
            return;
        }
        const query = new URLSearchParams(Array.from(listed.keys(), (name) => ['room', name]));
        try {
            const response = await fetch(roomsUrl + '?' + query);
            if (!response.ok) {
                return;  // a 429 or an outage: the next refresh asks again
            }
            for (const room of (await response.json()).rooms) {
                const online = listed.get(room.name);
                if (online !== undefined && room.online !== undefined) {
                    online.textContent = room.online + ' online';
                }
            }
        } catch (error) {
            // offline: the next refresh asks again
        }
    }

    refreshOnline();
    setInterval(refreshOnline, ONLINE_REFRESH_MS);
    document.addEventListener('visibilitychange', refreshOnline);
    window.addEventListener('pageshow', (e) => { if (e.persisted) { refreshOnline(); } });
})();
