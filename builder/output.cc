// Output targets.
#include "builder/output.h"

#include <stdexcept>

#include "builder/docker_archive.h"
#include "builder/oci_layout.h"
#include "layers/input_error.h"
#include "spec/userinfo.h"

namespace kiln::builder {

OutputTarget parse_output(const std::string& text) {
  OutputTarget t;
  t.text = text;
  if (text.rfind("oci:", 0) == 0) {
    t.kind = OutputTarget::Kind::OciLayout;
    split_oci_ref(text, &t.path, &t.tag);
  } else if (text.rfind("docker-archive:", 0) == 0) {
    t.kind = OutputTarget::Kind::DockerArchive;
    t.path = text.substr(15);
    if (t.path.empty()) throw std::invalid_argument("'" + text + "' names no file; use docker-archive:FILE");
  } else {
    // (Never echoed with credentials in it: "-o user:pw@host/repo" is a registry reference.)
    throw std::invalid_argument("unknown output '" + spec::redact_userinfo(text).value_or(text) +
                                "'; use oci:DIR[:TAG] or docker-archive:FILE (a registry: --push)");
  }
  return t;
}

std::string write_output(const Image& img, const OutputTarget& target, const std::string& repository,
                         const std::string& tag) {
  switch (target.kind) {
    case OutputTarget::Kind::OciLayout:
      return write_oci_layout(img, target.path, target.tag.empty() ? tag : target.tag);
    case OutputTarget::Kind::DockerArchive:
      write_docker_archive(img, target.path, repository + ":" + tag);
      return img.manifest_digest();
  }
  throw std::logic_error("unknown output kind");
}

void check_output_for_index(const OutputTarget& target, const std::string& platforms) {
  if (target.kind == OutputTarget::Kind::DockerArchive)
    throw layers::InputError("-o " + target.text + ": a docker-archive holds one image, and this spec builds one for each of " +
                             platforms + "; write an OCI layout (oci:DIR) or push, or pick one platform with --platform");
}

std::string write_output(const ImageIndex& index, const OutputTarget& target, const std::string& /*repository*/,
                         const std::string& tag) {
  switch (target.kind) {
    case OutputTarget::Kind::OciLayout:
      return write_oci_layout(index, target.path, target.tag.empty() ? tag : target.tag);
    case OutputTarget::Kind::DockerArchive: {
      std::string platforms;
      for (const auto& [p, img] : index.images) platforms += (platforms.empty() ? "" : ",") + p;
      check_output_for_index(target, platforms);
    }
  }
  throw std::logic_error("unknown output kind");
}

}  // namespace kiln::builder
