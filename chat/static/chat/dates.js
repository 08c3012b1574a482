// Dates and times, one way on every page (the index and the room load this first): the
// reader's local time, in the browser's language, as hours and minutes ("07:19 AM" or
// "07:19"), and days as "Today", "Yesterday" or the date in words.
//
//   chatDates.time(date)    "07:19 AM": a message's time.
//   chatDates.day(date)     "Today", "Yesterday", "Sunday, December 6, 2026".
//   chatDates.full(date)    "Today, 07:19 AM": a time on its own (the index, a tooltip).
//   chatDates.dayKey(date)  "2026-12-07": the local day, to compare two dates by.
//
// A time the server writes into a page is a <time class="local" datetime="..."> holding the
// server's UTC, shown as the reader's time (its full date on hover) once this file runs.
(function () {
    'use strict';

    function dayKey(date) {
        return date.getFullYear() + '-' + String(date.getMonth() + 1).padStart(2, '0') + '-' +
               String(date.getDate()).padStart(2, '0');
    }

    function time(date) {
        return date.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
    }

    function day(date) {
        const today = new Date();
        const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
        if (dayKey(date) === dayKey(today)) {
            return 'Today';
        }
        if (dayKey(date) === dayKey(yesterday)) {
            return 'Yesterday';
        }
        return date.toLocaleDateString([], {weekday: 'long', year: 'numeric', month: 'long', day: 'numeric'});
    }

    function full(date) {
        return day(date) + ', ' + time(date);
    }

    window.chatDates = {time: time, day: day, full: full, dayKey: dayKey};

    function localize() {
        for (const element of document.querySelectorAll('time.local[datetime]')) {
            const when = new Date(element.getAttribute('datetime'));
            if (!Number.isNaN(when.getTime())) {
                element.textContent = full(when);
                element.title = when.toLocaleString();
            }
        }
    }

    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', localize);
    } else {
        localize();
    }
})();
