// The index page: the tutorial's focus on the room name box (in a file: the CSP runs no
// inline script), your recent rooms (kept in this browser by sidebar.js), and each
// room's last message time in your local time.
(function () {
    'use strict';

    document.querySelector('#room-name-input').focus();

    let recent = [];
    try {
        recent = JSON.parse(window.localStorage.getItem('chat:recent-rooms') || '[]');
    } catch (error) {
        recent = [];
    }
    const names = Array.isArray(recent) ? recent.filter((name) => typeof name === 'string') : [];
    if (names.length > 0) {
        const list = document.getElementById('recent-rooms-list');
        for (const name of names) {
            const item = document.createElement('li');
            const link = document.createElement('a');
            link.href = '/chat/' + encodeURIComponent(name) + '/';
            link.textContent = name;  // text, never HTML
            item.append(link);
            list.append(item);
        }
        document.getElementById('recent-rooms').hidden = false;
    }

    for (const time of document.querySelectorAll('#active-rooms time[datetime]')) {
        const when = new Date(time.getAttribute('datetime'));
        if (!Number.isNaN(when.getTime())) {
            time.textContent = when.toLocaleString();
        }
    }
})();
