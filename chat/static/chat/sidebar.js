// The room page's sidebar: the rooms with recent activity and your recent rooms, each with
// its unread count, and the total unread in the document title ("(3) lobby · Chat").
//
// - Unread in a room = its last message id - your read position there (ids number a room's
//   messages 1, 2, 3... with no gaps). A room you have never read shows no count.
// - Read position: a logged-in user's is kept on the server (POST /api/rooms/<room>/read/),
//   so it follows them to other devices; a guest's stays in this browser (localStorage).
// - This room is read while the tab is visible; messages that arrive while it is hidden
//   count as unread until you come back.
// - The list is read from GET /api/rooms/?online=0 every ROOMS_REFRESH_MS while the tab is
//   visible, and once when it comes back (a hidden tab asks nothing), naming your recent
//   rooms so they are listed too. It asks with If-None-Match: the ETag of the list it has,
//   and a list that has not changed is a 304 the server answers without building it.
// It listens to the page's events (chat:message, chat:connection); it never touches messages.
(function () {
    'use strict';

    const ROOMS_REFRESH_MS = 5000;
    // A logged-in reader's position is sent at most this often, however fast messages come.
    const READ_REPORT_DELAY_MS = 1000;
    const RECENT_ROOMS_KEY = 'chat:recent-rooms';
    const RECENT_ROOMS_MAX = 10;
    const READ_KEY_PREFIX = 'chat:read:';  // a guest's read position per room

    const sidebar = document.getElementById('rooms-sidebar');
    const list = document.getElementById('rooms-sidebar-list');
    const toggle = document.getElementById('rooms-sidebar-toggle');
    const roomName = JSON.parse(document.getElementById('room-name').textContent);
    const isGuest = sidebar.dataset.guest === 'true';
    const signIn = JSON.parse(document.getElementById('chat-reader').textContent).sign_in;
    const baseTitle = document.title;

    let rooms = [];            // the last /api/rooms/ answer
    let lastSeen = 0;          // newest message id this page has shown in this room
    let serverRead = {};       // room -> read position the server holds (logged in)
    let reported = -1;         // read position last sent to the server for this room
    let reportTimer = null;
    let firstListing = true;
    let listingTag = null;     // the ETag of `rooms`

    function readKey(name) {
        return READ_KEY_PREFIX + name;
    }

    function storedNumber(key) {
        const value = Number(window.localStorage.getItem(key));
        return Number.isSafeInteger(value) && value > 0 ? value : 0;
    }

    // Where this reader has read up to in a room, or null when they never read it.
    function readPosition(name) {
        if (isGuest) {
            const value = window.localStorage.getItem(readKey(name));
            return value === null ? null : storedNumber(readKey(name));
        }
        const known = serverRead[name];
        const here = name === roomName && reported >= 0 ? reported : null;
        if (known === undefined || known === null) {
            return here;
        }
        return here === null ? known : Math.max(known, here);
    }

    function recentRooms() {
        try {
            const names = JSON.parse(window.localStorage.getItem(RECENT_ROOMS_KEY) || '[]');
            return Array.isArray(names) ? names.filter((n) => typeof n === 'string') : [];
        } catch (error) {
            return [];
        }
    }

    function rememberThisRoom() {
        const names = [roomName, ...recentRooms().filter((name) => name !== roomName)];
        window.localStorage.setItem(RECENT_ROOMS_KEY,
                                    JSON.stringify(names.slice(0, RECENT_ROOMS_MAX)));
    }

    // The page shows every message up to lastSeen: while it is visible, they are read.
    // A room read with no message in it yet is recorded too (at 0): its first one counts.
    function markRead(upTo) {
        if (document.hidden) {
            return;
        }
        if (isGuest) {
            const key = readKey(roomName);
            if (window.localStorage.getItem(key) === null || upTo > storedNumber(key)) {
                window.localStorage.setItem(readKey(roomName), String(upTo));
            }
        } else if (upTo > reported && upTo > 0) {
            // Nothing to have read in a room with no messages (the server answers 404).
            reported = upTo;
            clearTimeout(reportTimer);
            reportTimer = setTimeout(reportRead, READ_REPORT_DELAY_MS);
        }
        render();
    }

    // Django rotates the CSRF token at each login (in another tab, say): the cookie holds
    // the current one, the page the one it was rendered with.
    function csrfToken() {
        const prefix = sidebar.dataset.csrfCookie + '=';
        const cookie = document.cookie.split('; ').find((c) => c.startsWith(prefix));
        return cookie === undefined
            ? sidebar.dataset.csrf : decodeURIComponent(cookie.slice(prefix.length));
    }

    // With the page's sign-in: after a logout or a login in another tab, the server refuses
    // it (409) rather than record this page's position for whoever is signed in now.
    function reportRead() {
        clearTimeout(reportTimer);
        reportTimer = null;
        const body = new URLSearchParams({up_to: String(reported), as: signIn});
        fetch('/api/rooms/' + encodeURIComponent(roomName) + '/read/', {
            method: 'POST',
            headers: {'X-CSRFToken': csrfToken()},
            body: body,
            credentials: 'same-origin',
            keepalive: true,  // outlives the page when it is sent as the page goes
        }).then((response) => response.ok ? response.json() : null).then((answer) => {
            if (answer !== null) {
                serverRead[roomName] = answer.read_up_to;
            }
        }).catch(() => {});  // sent again with the next message or visit
    }

    function unreadIn(room) {
        const position = readPosition(room.name);
        return position === null ? 0 : Math.max(room.last_id - position, 0);
    }

    function render() {
        list.replaceChildren();
        let total = 0;
        for (const room of rooms) {
            const unread = unreadIn(room);
            total += unread;
            const item = document.createElement('li');
            item.dataset.room = room.name;
            const link = document.createElement('a');
            link.href = '/chat/' + encodeURIComponent(room.name) + '/';
            link.textContent = room.title || room.name;  // text, never HTML
            if (room.name === roomName) {
                link.setAttribute('aria-current', 'page');
            }
            item.append(link);
            if (unread > 0) {
                const badge = document.createElement('span');
                badge.className = 'unread';
                badge.textContent = String(unread);
                const said = document.createElement('span');
                said.className = 'visually-hidden';  // "3 unread" to a screen reader
                said.textContent = ' unread';
                badge.append(said);
                item.append(' ', badge);
            }
            list.append(item);
        }
        document.title = (total > 0 ? '(' + total + ') ' : '') + baseTitle;
    }

    function refresh() {
        const query = new URLSearchParams({online: '0'});  // the sidebar shows no presence
        for (const name of recentRooms()) {
            query.append('room', name);
        }
        const headers = listingTag === null ? {} : {'If-None-Match': listingTag};
        // no-store: the page does the revalidating itself, and sees the 304.
        fetch(sidebar.dataset.roomsUrl + '?' + query,
              {credentials: 'same-origin', headers: headers, cache: 'no-store'})
            .then((response) => {
                if (response.status === 304) {
                    return null;  // the list is as it was
                }
                if (response.status === 400 && recentRooms().some((name) => name !== roomName)) {
                    // A recent room the server no longer accepts (a name from before the
                    // room-name rule grew) would fail every round: keep only this room,
                    // which the server has just served, and ask again.
                    window.localStorage.setItem(RECENT_ROOMS_KEY, JSON.stringify([roomName]));
                    refresh();
                    return null;
                }
                if (!response.ok) {
                    return Promise.reject(response.status);
                }
                listingTag = response.headers.get('ETag');
                return response.json();
            })
            .then((answer) => {
                if (answer === null) {
                    return;
                }
                rooms = answer.rooms;
                for (const room of rooms) {
                    serverRead[room.name] = room.read_up_to;
                    if (room.name === roomName && firstListing) {
                        // The page has just shown this room's history: up to here is read.
                        lastSeen = Math.max(lastSeen, room.last_id);
                    }
                }
                if (!isGuest && Number.isSafeInteger(serverRead[roomName])) {
                    reported = Math.max(reported, serverRead[roomName]);
                }
                firstListing = false;
                markRead(lastSeen);
                render();
            })
            .catch(() => {});  // the next round tries again
    }

    document.addEventListener('chat:message', (event) => {
        const id = event.detail.data.id;
        if (Number.isSafeInteger(id) && id > lastSeen) {
            lastSeen = id;
            const here = rooms.find((room) => room.name === roomName);
            if (here !== undefined && id > here.last_id) {
                here.last_id = id;
            }
            markRead(lastSeen);
            render();
        }
    });
    document.addEventListener('visibilitychange', () => {
        if (!document.hidden) {
            markRead(lastSeen);
            refresh();
        }
    });
    // Another tab of this browser read a room: a guest's count follows at once.
    window.addEventListener('storage', (event) => {
        if (event.key !== null && event.key.startsWith(READ_KEY_PREFIX)) {
            render();
        }
    });
    // Leaving before the report was due: send it now.
    window.addEventListener('pagehide', () => {
        if (reportTimer !== null) {
            reportRead();
        }
    });
    toggle.addEventListener('click', () => {
        const open = sidebar.classList.toggle('open');
        toggle.setAttribute('aria-expanded', String(open));
    });

    rememberThisRoom();
    refresh();
    setInterval(() => {
        if (!document.hidden) {  // a hidden tab asks when it is shown again (visibilitychange)
            refresh();
        }
    }, ROOMS_REFRESH_MS);
})();
