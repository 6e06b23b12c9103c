// Pod spec fragments for modelcar images, and a small deterministic YAML writer.
#include "modelcar/k8s.h"

#include <cctype>
#include <stdexcept>

namespace kiln::modelcar {

using ojson = nlohmann::ordered_json;

namespace {

/// The kubelet expands $(VAR) in command and args, and turns "$$" into "$".
std::string k8s_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == '$') out += '$';
  }
  return out;
}

ojson resources(const PatchOptions& o) {
  ojson r = ojson::object();
  r["cpu"] = o.cpu;
  r["memory"] = o.memory;
  return {{"limits", r}, {"requests", r}};
}

ojson shared_mount() {
  // The emptyDir goes on /mnt: the modelcar puts its symlink at /mnt/models.
  std::string mount = kModelMountPath;
  return ojson::array({{{"name", kModelVolume}, {"mountPath", mount.substr(0, mount.rfind('/'))}}});
}

ojson security_context(const PatchOptions& o) { return {{"runAsUser", *o.run_as_user}}; }

ojson modelcar_container(const PatchOptions& o) {
  ojson c = ojson::object();
  c["name"] = kModelcarContainer;
  c["image"] = o.image;
  c["args"] = {"sh", "-c", k8s_escape(modelcar_command())};
  c["resources"] = resources(o);
  c["terminationMessagePolicy"] = "FallbackToLogsOnError";
  c["volumeMounts"] = shared_mount();
  if (o.run_as_user) c["securityContext"] = security_context(o);
  return c;
}

ojson modelcar_init_container(const PatchOptions& o) {
  ojson c = ojson::object();
  c["name"] = kModelcarInitContainer;
  c["image"] = o.image;
  c["args"] = {"sh", "-c", k8s_escape(modelcar_init_command())};
  c["resources"] = resources(o);
  c["terminationMessagePolicy"] = "FallbackToLogsOnError";
  return c;
}

bool hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// ---- YAML ----

bool plain_safe(const std::string& s) {
  if (s.empty()) return false;
  // Starting with a letter or '/' rules out numbers, indicators and `~`; the rest must be
  // ordinary characters, and ':' never followed by a space or at the end.
  if (!std::isalpha(static_cast<unsigned char>(s[0])) && s[0] != '/') return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '/' || c == '-' || c == '@')
      continue;
    if (c == ':' && i + 1 < s.size() && s[i + 1] != ' ') continue;
    return false;
  }
  std::string lower;
  for (char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const char* words[] = {"true", "false", "yes", "no", "on", "off", "y", "n", "null"};
  for (const char* w : words)
    if (lower == w) return false;
  return true;
}

std::string scalar(const ojson& v) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    return plain_safe(s) ? s : v.dump();  // JSON's double-quoted strings are valid YAML
  }
  return v.dump();  // numbers, booleans, null
}

bool is_block(const ojson& v) { return (v.is_object() || v.is_array()) && !v.empty(); }

void emit(const ojson& v, int indent, std::string& out);

/// "key: value" or "key:" followed by the block, at `indent`.
void emit_member(const std::string& key, const ojson& val, int indent, std::string& out) {
  out += std::string(indent, ' ') + key + ":";
  if (!is_block(val)) {
    out += " " + (val.is_object() ? std::string("{}") : val.is_array() ? std::string("[]") : scalar(val)) + "\n";
  } else {
    out += "\n";
    emit(val, val.is_array() ? indent : indent + 2, out);  // sequences stay at the key's indent
  }
}

void emit(const ojson& v, int indent, std::string& out) {
  const std::string pad(indent, ' ');
  if (v.is_object()) {
    for (const auto& [k, val] : v.items()) emit_member(k, val, indent, out);
    return;
  }
  for (const auto& item : v) {
    if (!is_block(item)) {
      out += pad + "- " +
             (item.is_object()  ? std::string("{}")
              : item.is_array() ? std::string("[]")
                                : scalar(item)) +
             "\n";
    } else if (item.is_object()) {
      std::string body;
      emit(item, indent + 2, body);
      body.replace(static_cast<std::size_t>(indent), 2, "- ");  // the first key goes on the dash line
      out += body;
    } else {
      out += pad + "-\n";
      emit(item, indent + 2, out);
    }
  }
}

}  // namespace

PatchMode parse_patch_mode(const std::string& s) {
  if (s == "init") return PatchMode::Init;
  if (s == "sidecar") return PatchMode::Sidecar;
  if (s == "imagevolume") return PatchMode::ImageVolume;
  throw std::invalid_argument("--mode must be init, sidecar or imagevolume, not '" + s + "'");
}

const char* to_string(PatchMode m) {
  switch (m) {
    case PatchMode::Init:
      return "init";
    case PatchMode::Sidecar:
      return "sidecar";
    case PatchMode::ImageVolume:
      return "imagevolume";
  }
  return "?";
}

std::string modelcar_command(const std::string& mount_path) {
  return "ln -sf /proc/$$/root/models " + mount_path + " && sleep infinity";
}

std::string modelcar_init_command() {
  return "[ -d /models ] && [ -n \"$(ls -A /models)\" ] && echo 'modelcar: /models is present and not empty' || "
         "{ echo 'modelcar: /models is missing or empty' >&2; exit 1; }";
}

bool is_digest_reference(const std::string& ref) {
  std::size_t at = ref.rfind("@sha256:");
  return at != std::string::npos && at > 0 && hex64(ref.substr(at + 8));
}

ojson pod_patch(const PatchOptions& o) {
  if (!is_digest_reference(o.image))
    throw std::invalid_argument("the modelcar image must be a digest reference (repo@sha256:…), not '" + o.image + "'");
  if (o.container.empty()) throw std::invalid_argument("the server container name is empty");

  ojson server = ojson::object();
  server["name"] = o.container;
  ojson spec = ojson::object();
  ojson volume = ojson::object();
  volume["name"] = kModelVolume;

  switch (o.mode) {
    case PatchMode::Init:
    case PatchMode::Sidecar: {
      spec["shareProcessNamespace"] = true;  // the server reaches the modelcar's root via /proc
      ojson init = ojson::array({modelcar_init_container(o)});
      ojson car = modelcar_container(o);
      if (o.mode == PatchMode::Sidecar) {
        // A native sidecar: started before the server, which waits until the link resolves.
        car["restartPolicy"] = "Always";
        car["startupProbe"] = {{"exec", {{"command", {"ls", std::string(kModelMountPath) + "/"}}}},
                               {"periodSeconds", 1},
                               {"failureThreshold", 120}};
        init.push_back(car);
      } else {
        // The server may start before the link exists: KServe's runtimes wait for it in async mode.
        server["env"] = ojson::array({{{"name", kModelInitModeEnv}, {"value", "async"}}});
      }
      server["volumeMounts"] = shared_mount();
      if (o.run_as_user) server["securityContext"] = security_context(o);
      spec["initContainers"] = init;
      spec["containers"] = ojson::array({server});
      if (o.mode == PatchMode::Init) spec["containers"].push_back(car);
      volume["emptyDir"] = ojson::object();
      break;
    }
    case PatchMode::ImageVolume: {
      ojson mount = ojson::object();
      mount["name"] = kModelVolume;
      mount["mountPath"] = kModelMountPath;
      mount["subPath"] = "models";
      mount["readOnly"] = true;
      server["volumeMounts"] = ojson::array({mount});
      spec["containers"] = ojson::array({server});
      volume["image"] = {{"reference", o.image}, {"pullPolicy", "IfNotPresent"}};
      break;
    }
  }
  spec["volumes"] = ojson::array({volume});
  if (o.template_wrap) return {{"spec", {{"template", {{"spec", spec}}}}}};
  return {{"spec", spec}};
}

std::string to_yaml(const ojson& doc, const std::string& comment) {
  std::string out;
  if (!comment.empty()) {
    std::size_t start = 0;
    for (;;) {
      std::size_t nl = comment.find('\n', start);
      out += "# " + comment.substr(start, nl == std::string::npos ? std::string::npos : nl - start) + "\n";
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  if (is_block(doc)) {
    emit(doc, 0, out);
  } else {
    out += scalar(doc) + "\n";
  }
  return out;
}

}  // namespace kiln::modelcar
