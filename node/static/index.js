// Home page: navigation and the sign-in panel.
'use strict';
Fanout.nav('/');
Fanout.authPanel(document.getElementById('auth'));
