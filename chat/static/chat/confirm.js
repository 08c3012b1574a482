// Forms whose sender cannot undo them (leaving a private room: only an invitation brings
// them back; giving up moderation: only the owner gives it back) ask first, in the page, as
// a message's Delete does: the button gives way to the question (the form's data-confirm),
// a button that sends the form (data-confirm-label) and Cancel. Escape cancels too.
// Without scripts the form posts at once.
(function () {
    'use strict';

    function ask(form, button) {
        const box = document.createElement('span');
        box.className = 'confirm';
        box.setAttribute('role', 'group');
        const question = document.createElement('span');
        question.className = 'confirm-question';
        question.id = form.id + '-question';
        question.textContent = form.dataset.confirm;
        box.setAttribute('aria-labelledby', question.id);
        const yes = document.createElement('button');
        yes.type = 'submit';
        yes.className = 'confirm-yes';
        yes.textContent = form.dataset.confirmLabel;
        yes.setAttribute('aria-describedby', question.id);
        const no = document.createElement('button');
        no.type = 'button';
        no.className = 'confirm-no';
        no.textContent = 'Cancel';
        const cancel = function () {
            box.remove();
            button.hidden = false;
            button.focus();
        };
        no.addEventListener('click', cancel);
        box.addEventListener('keydown', function (e) {
            if (e.key === 'Escape') {
                e.preventDefault();
                cancel();
            }
        });
        box.append(question, ' ', yes, ' ', no);
        button.hidden = true;
        button.after(box);
        yes.focus();
    }

    document.addEventListener('submit', function (e) {
        const form = e.target;
        if (!(form instanceof HTMLFormElement) || !form.dataset.confirm ||
                (e.submitter && e.submitter.classList.contains('confirm-yes'))) {
            return;
        }
        e.preventDefault();
        const button = form.querySelector('button[type="submit"]:not(.confirm-yes)');
        if (button !== null && !button.hidden) {
            ask(form, button);
        }
    });
})();
