// A JS module the mesh scenario publishes with its TLS config (settings.js_module: auth).
function allowed(r) {
    return !r.uri.startsWith('/admin');
}

export default { allowed };
