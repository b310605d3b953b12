// The engine's own thread (the default of `Engine.load`): cinder.js starts this module
// worker and talks to it with the messages `engineHost` documents, so the page's main
// thread only renders.

import { engineHost } from './core.js';

const receive = engineHost((data) => self.postMessage(data));
self.onmessage = ({ data }) => receive(data);
